"""Real-time activation, event-driven: whenever `segflow stream` announces new trigger transitions (an
AssetWatcher on its Redis channel, with `stream.url` set), deliver them - consenting users only - to the CRM's
`crm_triggers` table and an activation file (segflow/activation/triggers.py). Each run delivers everything after
the last delivered entry, so an announcement missed while the triggerer resubscribed is delivered by the next run.
"""

from airflow.sdk import task

from segflow.airflow import callables
from segflow.airflow.assets import stream_triggers
from segflow.airflow.dag_defaults import segflow_dag

with segflow_dag("segflow_activate", schedule=[stream_triggers()], doc_md=__doc__, tags=("activation",)):

    @task
    def deliver_triggers() -> dict:
        return callables.deliver_triggers()

    deliver_triggers()
