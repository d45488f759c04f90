"""The lifetime-value model as an MLflow pyfunc (it is not a scikit-learn estimator): versioned, aliased and
loaded like the other models; `unwrap_python_model().model` gives the segflow.ml.clv.LifetimeValue back."""

from __future__ import annotations

import pandas as pd
from mlflow.pyfunc import PythonModel

from segflow.ml.clv import LifetimeValue


class LifetimeValueModel(PythonModel):
    def __init__(self, model: LifetimeValue, horizon_days: int = 365, orders_days: int = 90):
        self.model = model
        self.horizon_days = horizon_days
        self.orders_days = orders_days

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """model_input: x, t_x, T (days) and m per customer (segflow.ml.clv.clv_inputs)."""
        return self.model.predict(model_input, self.horizon_days, self.orders_days)
