"""TaskFlow tasks shared by several DAGs (defined once, instantiated inside each DAG)."""

from pathlib import Path

from airflow.sdk import task

from segflow.airflow import callables


@task
def resolve_as_of(**context) -> str:
    """The run's as-of date (see segflow.airflow.callables.resolve_as_of for the rules)."""
    return callables.as_of_from_context(context).isoformat()


@task
def dbt_vars(as_of: str) -> dict:
    """The dbt vars of this run (as_of plus settings from segflow.yml), read when the run executes."""
    from segflow.core.dbt import dbt_vars as compute

    return compute(as_of, callables.settings())


def templated_dbt_vars(task_id: str = "dbt_vars") -> dict:
    """Cosmos operator vars pulled from the `dbt_vars` task at run time (DAG files stay free of config I/O)."""
    from segflow.core.dbt import DBT_VAR_NAMES

    return {name: f"{{{{ ti.xcom_pull(task_ids='{task_id}')['{name}'] }}}}" for name in DBT_VAR_NAMES}


def dbt_parse_cache_dir(dag_id: str) -> Path | None:
    """Where a DAG's dbt tasks keep dbt's partial-parse state between invocations (under Cosmos' cache_dir, as a
    DbtDag does): the publish step then re-parses only what changed since the build of the same date instead of
    the whole project (~7 s of each ~19 s publish at 250 users). dbt itself decides whether the saved state is
    usable - a run for another date (other --vars) parses in full. None when Cosmos' cache is disabled."""
    from cosmos import settings

    if not (settings.enable_cache and settings.enable_cache_partial_parse):
        return None
    return settings.cache_dir / dag_id
