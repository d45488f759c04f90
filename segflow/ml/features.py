"""Feature access and the column sets the models use."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from segflow.core.engines import connect_engine

# Heavy-tailed counts, amounts and durations are log-scaled before standardising.
COUNT_FEATURES = [
    "frequency_365d",
    "monetary_365d",
    "lifetime_orders",
    "lifetime_spend",
    "orders_30d",
    "orders_90d",
    "orders_180d",
    "spend_90d",
    "active_days_30d",
    "sessions_30d",
    "email_opens_30d",
    "email_clicks_30d",
    "intent_score_30d",
    "page_views_7d",
    "tenure_days",
    # The buy-till-you-die signal: the customer's age, repeat purchases, rhythm and where they stand in it.
    "purchase_days",
    "customer_age_days",
    "days_first_to_last_purchase",
    "mean_interpurchase_days",
    "last_interpurchase_days",
    "recency_ratio",
    "avg_order_value",
    "avg_items_per_order",
    "avg_lines_per_order",
    "days_since_last_activity",
    "returned_value_365d",
    # What the customer's products say (where the source has product ids): how widely bought they are.
    "avg_product_buyers_90d",
    "avg_log_product_buyers",
]
# Linear as they are: churn hazard grows steadily with days since the last purchase.
SCORE_FEATURES = ["recency_days", "engagement_score", "top_category_share", "age", "repeat_product_share"]
# Ratios and shares around 1 or within [0, 1]: standardised, without splines (as in the offline experiments on
# Online Retail that chose them; docs/models.md).
RATIO_FEATURES = ["last_order_lines_ratio", "purchase_day_rate_365d", "products_sold_30d_share"]
CATEGORICAL_FEATURES = ["income_band", "preferred_device", "age_band", "country"]
BOOLEAN_FEATURES = ["cart_abandoned_30d", "has_email_consent"]
MODEL_FEATURES = COUNT_FEATURES + SCORE_FEATURES + RATIO_FEATURES + CATEGORICAL_FEATURES + BOOLEAN_FEATURES
# What the lifetime-value models read (segflow.ml.clv): x, t_x, T in days and m, from user_features.
CLV_FEATURES = ["purchase_days", "days_first_to_last_purchase", "customer_age_days", "repeat_purchase_value"]

# Personas: life stage (age, tenure), activity and value - lasting traits, not consent or geography. Recency
# is left to the churn model: it says where a user is in their lifecycle, not who they are.
CLUSTER_LOG_FEATURES = ["tenure_days", "active_days_30d", "frequency_365d", "monetary_365d"]
CLUSTER_PLAIN_FEATURES = ["age"]
# What a persona's profile reports (means against the population).
PROFILE_FEATURES = (
    CLUSTER_LOG_FEATURES
    + CLUSTER_PLAIN_FEATURES
    + [
        "recency_days",
        "sessions_30d",
        "engagement_score",
        "email_clicks_30d",
        "orders_90d",
    ]
)


def read_features(warehouse_url: str, as_of: date | str | None = None) -> pd.DataFrame:
    """marts.user_features, or one partition of marts.user_features_history when `as_of` is given.

    Args:
        warehouse_url: the warehouse (Settings.warehouse_url: DuckDB or PostgreSQL).
        as_of: the feature date, or None for the published features.

    Returns:
        One row per user, ordered by user id.
    """
    with connect_engine(warehouse_url) as engine:
        if as_of is None:
            return engine.frame("SELECT * FROM marts.user_features ORDER BY user_id")
        return engine.frame(
            "SELECT * FROM marts.user_features_history WHERE as_of = CAST(? AS DATE) ORDER BY user_id", [str(as_of)]
        )


def read_training_set(warehouse_url: str) -> pd.DataFrame:
    """ml.churn_training_set (every snapshot's features and labels) from the warehouse at `warehouse_url`."""
    with connect_engine(warehouse_url) as engine:
        return engine.frame("SELECT * FROM ml.churn_training_set ORDER BY as_of, user_id")


def prepare(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Select model columns with stable dtypes (nullable ints -> float, booleans -> float, text -> object)."""
    out = pd.DataFrame(index=frame.index)
    for col in columns:
        series = frame[col] if col in frame else pd.Series(np.nan, index=frame.index)
        if col in CATEGORICAL_FEATURES:
            out[col] = series.astype("object").where(series.notna(), "Unknown").astype(str)
        else:
            out[col] = pd.to_numeric(series.astype("float64"), errors="coerce")
    return out


def log1p_clipped(values):
    """log(1 + x) of non-negative values (negative ones, e.g. a refund-heavy spend, count as 0)."""
    return np.log1p(np.clip(values, 0, None))


def observed(columns: list[str], frame: pd.DataFrame) -> list[str]:
    """The columns with at least one value: features of an absent source (e.g. engagement without analytics
    events) are left out of the model rather than imputed from nothing."""
    return [c for c in columns if c in frame and frame[c].notna().any()]


def preprocessor(
    numeric_log: list[str], numeric_plain: list[str], categorical: list[str], impute: bool = True
) -> ColumnTransformer:
    """Log scaling of counts, standardisation, one-hot categories. impute=False keeps unknown values as NaN, for
    models that handle them (segflow.ml.clustering.MarginalClusterer)."""
    fill = [("impute", SimpleImputer(strategy="median"))] if impute else []
    parts = []
    if numeric_log:
        steps = [
            *fill,
            ("log1p", FunctionTransformer(log1p_clipped, feature_names_out="one-to-one")),
            ("scale", StandardScaler()),
        ]
        parts.append(("log", Pipeline(steps), numeric_log))
    if numeric_plain:
        parts.append(("num", Pipeline([*fill, ("scale", StandardScaler())]), numeric_plain))
    if categorical:
        parts.append(
            ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=0.01, sparse_output=False), categorical)
        )
    return ColumnTransformer(parts, verbose_feature_names_out=False)


def synthetic_example(X: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """An input example for the model registry that belongs to nobody: numeric columns at population quantiles,
    categorical columns at their most frequent value. No user's row leaves the warehouse this way."""
    quantiles = np.linspace(0.1, 0.9, rows)
    out: dict[str, object] = {}
    for col in X.columns:
        series = X[col]
        if series.dtype == object or col in CATEGORICAL_FEATURES:
            mode = series.mode()
            out[col] = [mode.iloc[0] if len(mode) else "Unknown"] * rows
        else:
            values = series.dropna()
            out[col] = values.quantile(quantiles).to_numpy() if len(values) else np.full(rows, np.nan)
    return pd.DataFrame(out)[list(X.columns)]
