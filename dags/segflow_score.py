"""Scoring, triggered by each new user_features build: score every user with the `@champion` models,
gate the scores, publish them (marts.user_scores_history; marts.user_scores when the date is the latest), then
write back to the CRM and the activation export, sync the segment API's serving store and, alongside, check feature drift, the score distribution and
persona sizes (ml.model_monitoring, MLflow).

A run scores every date its triggering asset events carry and every published date still without current
scores, oldest first (a backfill publishes many days while a run is active); the write-back takes only the
latest date, so a backfilled past never overwrites the CRM's current state.
"""

from airflow.sdk import chain, task

from segflow.airflow import callables
from segflow.airflow.assets import USER_FEATURES, USER_SCORES
from segflow.airflow.callables import DUCKDB_POOL
from segflow.airflow.dag_defaults import segflow_dag

with segflow_dag("segflow_score", schedule=[USER_FEATURES], doc_md=__doc__, tags=("ml",)):

    @task(pool=DUCKDB_POOL)  # reads the warehouse: readers are refused while a writer works
    def resolve_dates(**context) -> list[str]:
        return [d.isoformat() for d in callables.score_dates_from_context(context)]

    @task(pool=DUCKDB_POOL)
    def score_users(dates: list[str], **context) -> list[dict]:
        return [callables.score(day, context["run_id"]) for day in dates]

    @task(pool=DUCKDB_POOL, outlets=[USER_SCORES])
    def write_back(dates: list[str]) -> dict:
        return callables.write_back_latest(dates)

    @task(pool=DUCKDB_POOL)
    def sync_serving(dates: list[str]) -> dict:
        return callables.sync_serving(dates)

    @task(pool=DUCKDB_POOL)
    def monitor_drift(dates: list[str]) -> list[dict]:
        return [callables.monitor(day) for day in dates]

    dates = resolve_dates()
    chain(dates, score_users(dates), [write_back(dates), sync_serving(dates), monitor_drift(dates)])
