"""Scoring, triggered by each new user_features build: score every user with the `@champion` models,
gate the scores, publish marts.user_scores atomically, then write back to the CRM and the activation export and,
alongside, check feature drift, the score distribution and persona sizes (ml.model_monitoring, MLflow)."""

from airflow.sdk import chain, task

from segflow import orchestration
from segflow.assets import USER_FEATURES, USER_SCORES
from segflow.dag_defaults import segflow_dag
from segflow.dag_tasks import resolve_as_of
from segflow.orchestration import DUCKDB_POOL

with segflow_dag("segflow_score", schedule=[USER_FEATURES], doc_md=__doc__, tags=("ml",)):

    @task(pool=DUCKDB_POOL)
    def score_users(as_of: str, **context) -> dict:
        return orchestration.score(as_of, context["run_id"])

    @task(pool=DUCKDB_POOL, outlets=[USER_SCORES])
    def write_back(as_of: str) -> dict:
        return orchestration.write_back(as_of)

    @task(pool=DUCKDB_POOL)
    def monitor_drift(as_of: str) -> dict:
        return orchestration.monitor(as_of)

    as_of = resolve_as_of()
    chain(as_of, score_users(as_of), [write_back(as_of), monitor_drift(as_of)])
