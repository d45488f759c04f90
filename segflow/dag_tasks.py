"""TaskFlow tasks shared by several DAGs (defined once, instantiated inside each DAG)."""

from airflow.sdk import task

from segflow import orchestration


@task
def resolve_as_of(**context) -> str:
    """The run's as-of date (see segflow.orchestration.resolve_as_of for the rules)."""
    return orchestration.as_of_from_context(context).isoformat()
