"""Retraining (weekly, or on demand): personas (clustering) and churn, registered in MLflow.

A new version becomes `@champion` only if it beats the current champion on the same holdout;
otherwise it is `@challenger`. Daily scoring keeps using the champion.
"""

from airflow.sdk import DAG, Param, chain, task

from segflow import orchestration
from segflow.assets import CHAMPION_MODELS
from segflow.dag_defaults import AS_OF_PARAM_DOC, DEFAULT_ARGS, START_DATE
from segflow.orchestration import DUCKDB_POOL

with DAG(
    dag_id="segflow_train",
    schedule="@weekly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # MLflow's SQLite store takes one writer
    default_args=DEFAULT_ARGS,
    params={"as_of": Param("", type="string", description=AS_OF_PARAM_DOC)},
    tags=["segflow", "ml"],
    doc_md=__doc__,
):

    @task
    def resolve_as_of(**context) -> str:
        return orchestration.as_of_from_context(context).isoformat()

    @task(pool=DUCKDB_POOL, outlets=[CHAMPION_MODELS])
    def train_models(as_of: str) -> dict:
        return orchestration.train(as_of)

    as_of = resolve_as_of()
    chain(as_of, train_models(as_of))
