"""Daily build (write-audit-publish): extract sources -> erasure requests applied -> raw quality gate -> dbt builds audit candidates
(features, segments) with their tests -> marts quality gate -> dbt publishes marts.

A failed gate stops before publishing, so the marts keep their last good version. Publishes the
`segflow.marts.user_features` asset (extra: as_of), which triggers segflow_score.

Runs of different dates may interleave (a backfill beside the daily run, several backfill runs at once): each
date builds its candidates in its own schema (audit_<yyyymmdd>), publishing replaces only its own partitions,
the current tables follow the latest date, and segment events are recomputed for the next date - so any order
gives the tables a day-by-day run gives (tests/e2e/test_operations.py).
"""

from airflow.sdk import Param, chain, task
from cosmos import ProfileConfig
from cosmos.constants import InvocationMode
from cosmos.operators.local import DbtBuildLocalOperator

from segflow.airflow import callables
from segflow.airflow.assets import USER_FEATURES
from segflow.airflow.callables import DUCKDB_POOL
from segflow.airflow.dag_defaults import segflow_dag
from segflow.airflow.shared_tasks import (
    dbt_parse_cache_dir,
    dbt_vars,
    resolve_as_of,
    templated_dbt_env,
    templated_dbt_vars,
)
from segflow.core.dbt import DAILY_BUILD_EXCLUDE, SCHEDULED_BUILD_FLAGS, dbt_target, release_dbt_duckdb
from segflow.core.resources import DBT_PROJECT_DIR

# The target comes from the environment Airflow runs with (SEGFLOW_DBT_TARGET, set from segflow.yml by segflow's
# Airflow environment): the same function the CLI and the training builds use.
profile_config = ProfileConfig(
    profile_name="segflow", target_name=dbt_target(), profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml"
)
# One `dbt build` per stage (models and their tests in dependency order), not one task per model: a dbt
# invocation costs ~1.5 s of start-up whatever the data size, which made 38 per-model tasks a minute per day
# and a 14-day backfill most of an hour. Per-model results are in the task log and in target/run_results.json.
dbt_operator_args = {
    "project_dir": str(DBT_PROJECT_DIR),
    "profile_config": profile_config,
    "invocation_mode": InvocationMode.DBT_RUNNER,
    "install_deps": False,
    "emit_datasets": False,
    "pool": DUCKDB_POOL,
    "vars": templated_dbt_vars(),
    "env": templated_dbt_env(),
    "dbt_cmd_flags": list(SCHEDULED_BUILD_FLAGS),
    "cache_dir": dbt_parse_cache_dir("segflow_build"),
    # The profile keeps one DuckDB connection per invocation; close it when dbt is done: the tasks of a
    # `segflow run` share one process (a worker runs each task in a process of its own, which ends with it).
    "callback": release_dbt_duckdb,
}

FULL_REFRESH_DOC = (
    "Reload every source file dated up to as_of, changed or not, and rebuild the incremental event "
    "models from scratch (default: new and changed files, recent days)."
)
FULL_REFRESH_TEMPLATE = "{{ (dag_run.conf or {}).get('full_refresh', params.full_refresh) }}"

with segflow_dag(
    "segflow_build",
    schedule="@daily",
    doc_md=__doc__,
    tags=(),
    params={"full_refresh": Param(False, type="boolean", description=FULL_REFRESH_DOC)},
):

    @task(pool=DUCKDB_POOL)
    def extract(as_of: str, **context) -> dict:
        return callables.extract(as_of, context["run_id"], full_refresh=callables.full_refresh_from_context(context))

    @task(pool=DUCKDB_POOL)
    def apply_erasures(**context) -> dict:
        return callables.apply_erasures(context["run_id"])

    @task(pool=DUCKDB_POOL)
    def validate_raw(as_of: str, **context) -> dict:
        return callables.validate_raw(as_of, context["run_id"])

    @task(pool=DUCKDB_POOL)
    def validate_marts(as_of: str, **context) -> dict:
        return callables.validate_marts(as_of, context["run_id"])

    @task(pool=DUCKDB_POOL, outlets=[USER_FEATURES])
    def publish_features(as_of: str, *, outlet_events) -> str:
        callables.discard_candidates(as_of)
        outlet_events[USER_FEATURES].extra = {"as_of": as_of}
        return as_of

    # full_refresh rebuilds the incremental event models of the build group; the published history tables
    # (publish group) are never fully refreshed: that would drop every past as-of partition.
    dbt_build = DbtBuildLocalOperator(
        task_id="dbt_build",
        exclude=" ".join(DAILY_BUILD_EXCLUDE),
        full_refresh=FULL_REFRESH_TEMPLATE,
        **dbt_operator_args,
    )
    dbt_publish = DbtBuildLocalOperator(task_id="dbt_publish", select="tag:publish", **dbt_operator_args)

    as_of = resolve_as_of()
    chain(
        as_of,
        dbt_vars(as_of),
        extract(as_of),
        apply_erasures(),
        validate_raw(as_of),
        dbt_build,
        validate_marts(as_of),
        dbt_publish,
        publish_features(as_of),
    )
