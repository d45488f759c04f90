"""Daily build (write-audit-publish): extract sources -> raw quality gate -> dbt builds audit candidates
(features, segments) with their tests -> marts quality gate -> dbt publishes marts.

A failed gate stops before publishing, so the marts keep their last good version. Publishes the
`segflow.marts.user_features` asset (extra: as_of), which triggers segflow_score.
"""

from airflow.sdk import Param, chain, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior

from segflow import orchestration
from segflow.airflow_env import DBT_PROJECT_DIR, MANIFEST_PATH
from segflow.assets import USER_FEATURES
from segflow.dag_defaults import segflow_dag
from segflow.dag_tasks import dbt_vars, resolve_as_of, templated_dbt_vars
from segflow.orchestration import DUCKDB_POOL

project_config = ProjectConfig(dbt_project_path=DBT_PROJECT_DIR, manifest_path=MANIFEST_PATH, project_name="segflow")
profile_config = ProfileConfig(profile_name="segflow", target_name="duckdb", profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml")
execution_config = ExecutionConfig(execution_mode=ExecutionMode.LOCAL, invocation_mode=InvocationMode.DBT_RUNNER)
# Tests that reference two models (relationships) run as their own task once both parents exist.
build_render = RenderConfig(load_method=LoadMode.DBT_MANIFEST, exclude=["tag:training", "tag:publish"],
                            test_behavior=TestBehavior.BUILD, should_detach_multiple_parents_tests=True)
publish_render = RenderConfig(load_method=LoadMode.DBT_MANIFEST, select=["tag:publish"], test_behavior=TestBehavior.BUILD)
dbt_operator_args = {
    "install_deps": False,
    "pool": DUCKDB_POOL,
    "vars": templated_dbt_vars(),
}

FULL_REFRESH_DOC = ("Reload every source file dated up to as_of, changed or not, and rebuild the incremental event "
                    "models from scratch (default: new and changed files, recent days).")
FULL_REFRESH_TEMPLATE = "{{ (dag_run.conf or {}).get('full_refresh', params.full_refresh) }}"

with segflow_dag("segflow_build", schedule="@daily", doc_md=__doc__, tags=(),
                 params={"full_refresh": Param(False, type="boolean", description=FULL_REFRESH_DOC)}):

    @task(pool=DUCKDB_POOL)
    def extract(as_of: str, **context) -> dict:
        return orchestration.extract(as_of, context["run_id"], full_refresh=orchestration.full_refresh_from_context(context))

    @task(pool=DUCKDB_POOL)
    def validate_raw(as_of: str, **context) -> dict:
        return orchestration.validate_raw(as_of, context["run_id"])

    @task(pool=DUCKDB_POOL)
    def validate_marts(as_of: str, **context) -> dict:
        return orchestration.validate_marts(as_of, context["run_id"])

    @task(outlets=[USER_FEATURES])
    def publish_features(as_of: str, *, outlet_events) -> str:
        outlet_events[USER_FEATURES].extra = {"as_of": as_of}
        return as_of

    # full_refresh rebuilds the incremental event models of the build group; the published history tables
    # (publish group) are never fully refreshed: that would drop every past as-of partition.
    build_operator_args = {**dbt_operator_args, "full_refresh": FULL_REFRESH_TEMPLATE}
    dbt_build = DbtTaskGroup(group_id="dbt_build", project_config=project_config, profile_config=profile_config,
                             execution_config=execution_config, render_config=build_render, operator_args=build_operator_args)
    dbt_publish = DbtTaskGroup(group_id="dbt_publish", project_config=project_config, profile_config=profile_config,
                               execution_config=execution_config, render_config=publish_render, operator_args=dbt_operator_args)

    as_of = resolve_as_of()
    chain(as_of, dbt_vars(as_of), extract(as_of), validate_raw(as_of), dbt_build, validate_marts(as_of), dbt_publish, publish_features(as_of))
