"""Retraining (weekly, or on demand): personas (clustering) and churn, registered in MLflow.

A new version becomes `@champion` only if it beats the current champion on the same holdout;
otherwise it is `@challenger`. Daily scoring keeps using the champion.
"""

from airflow.sdk import chain, task

from segflow.airflow import callables
from segflow.airflow.assets import CHAMPION_MODELS
from segflow.airflow.callables import DUCKDB_POOL
from segflow.airflow.dag_defaults import segflow_dag
from segflow.airflow.shared_tasks import resolve_as_of

with segflow_dag("segflow_train", schedule="@weekly", doc_md=__doc__, tags=("ml",)):

    @task(pool=DUCKDB_POOL, outlets=[CHAMPION_MODELS])
    def train_models(as_of: str) -> dict:
        return callables.train(as_of)

    as_of = resolve_as_of()
    chain(as_of, train_models(as_of))
