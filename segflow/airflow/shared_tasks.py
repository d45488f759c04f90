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
    """Cosmos operator vars pulled from the `dbt_vars` task at run time (DAG files stay free of config I/O): the
    settings' vars; the dates go through templated_dbt_env()."""
    from segflow.core.dbt import DATE_ENV, DBT_VAR_NAMES

    return {
        name: f"{{{{ ti.xcom_pull(task_ids='{task_id}')['{name}'] }}}}"
        for name in DBT_VAR_NAMES
        if name not in DATE_ENV
    }


def templated_dbt_env(task_id: str = "dbt_vars") -> dict:
    """Cosmos operator environment: Cosmos' dbt folders and the run's dates as dbt reads them
    (segflow.core.dbt.DATE_ENV), pulled from the `dbt_vars` task at run time. Dates left out are empty."""
    from segflow.core.dbt import COSMOS_DBT_ENV, DATE_ENV

    pull = f"ti.xcom_pull(task_ids='{task_id}')"
    return {
        **COSMOS_DBT_ENV,
        **{variable: f"{{{{ {pull}.get('{name}') or '' }}}}" for name, variable in DATE_ENV.items()},
    }


def dbt_parse_cache_dir(dag_id: str) -> Path | None:
    """Where a DAG's dbt tasks keep dbt's partial-parse state between invocations (under Cosmos' cache_dir, as a
    DbtDag does): the next dbt task, of this run or of a run for another date, re-parses only what changed instead of
    the whole project (~5-7 s of each invocation at 250 users): the dates are environment variables, and only the
    audit models read one while parsing (segflow.core.dbt.DATE_ENV). dbt itself decides whether the saved state is
    usable. None when Cosmos' cache is disabled."""
    from cosmos import settings

    if not (settings.enable_cache and settings.enable_cache_partial_parse):
        return None
    return settings.cache_dir / dag_id
