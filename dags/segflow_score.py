"""Scoring, triggered by each new user_features build: score every user with the `@champion` models,
gate the scores, publish marts.user_scores atomically, then write back to the CRM and the activation export."""

from airflow.sdk import DAG, Param, chain, task

from segflow import orchestration
from segflow.assets import USER_FEATURES, USER_SCORES
from segflow.dag_defaults import AS_OF_PARAM_DOC, DEFAULT_ARGS, START_DATE
from segflow.orchestration import DUCKDB_POOL

with DAG(
    dag_id="segflow_score",
    schedule=[USER_FEATURES],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"as_of": Param("", type="string", description=AS_OF_PARAM_DOC)},
    tags=["segflow", "ml"],
    doc_md=__doc__,
):

    @task
    def resolve_as_of(**context) -> str:
        return orchestration.as_of_from_context(context).isoformat()

    @task(pool=DUCKDB_POOL)
    def score_users(as_of: str, **context) -> dict:
        return orchestration.score(as_of, context["run_id"])

    @task(pool=DUCKDB_POOL, outlets=[USER_SCORES])
    def write_back(as_of: str) -> dict:
        return orchestration.write_back(as_of)

    as_of = resolve_as_of()
    chain(as_of, score_users(as_of), write_back(as_of))
