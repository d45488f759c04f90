"""Defaults shared by every segflow DAG (light imports only: this module is read at DAG parse time)."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from datetime import UTC, datetime, timedelta

from segflow.airflow import progress

log = logging.getLogger(__name__)

# Early on purpose: runs (and backfills) for any historical as-of date must be possible, e.g. the 2011
# Online Retail example or 1990s data; catchup=False keeps the scheduler from creating the runs in between.
# Earlier dates are refused by `segflow run` (Airflow would mark such a run successful without running a task).
START_DATE = datetime(1970, 1, 2, tzinfo=UTC)


def task_retries() -> int:
    """Retries per task; `segflow run` sets SEGFLOW_TASK_RETRIES=0 so an interactive run fails fast."""
    return int(os.environ.get("SEGFLOW_TASK_RETRIES", "2"))


def alert_payload(context) -> dict:
    ti = context.get("task_instance") or context.get("ti")
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": context.get("run_id"),
        "try_number": getattr(ti, "try_number", None),
        "error": str(context.get("exception"))[:2000],
    }


ALERT_CONNECTION_ID = "segflow_alert_webhook"


def alert_log_path() -> str:
    return os.environ.get("SEGFLOW_ALERT_LOG") or os.path.join(os.environ.get("AIRFLOW_HOME", "."), "alerts.jsonl")


def alert_webhook_url() -> str | None:
    """SEGFLOW_ALERT_WEBHOOK, else the Airflow connection `segflow_alert_webhook` (its host: the full URL)."""
    url = os.environ.get("SEGFLOW_ALERT_WEBHOOK")
    if url:
        return url
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(ALERT_CONNECTION_ID).host or None
    except Exception:  # noqa: BLE001 - no such connection (the usual case), or not inside a task
        return None


def on_failure_alert(context) -> None:
    """Record the failure: the task log, one JSON line in the alert log (SEGFLOW_ALERT_LOG, default
    $AIRFLOW_HOME/alerts.jsonl) and, when a webhook is configured, a JSON POST (Slack/Teams-style hooks)."""
    from segflow.airflow.progress import report

    report("failed", context)
    payload = {**alert_payload(context), "at": datetime.now(UTC).isoformat()}
    log.error("segflow task failed: %s", payload)
    try:
        with open(alert_log_path(), "a") as handle:
            handle.write(json.dumps(payload) + "\n")
    except OSError as exc:  # an alert must never mask the original failure
        log.warning("alert log not written: %s", exc)
    url = alert_webhook_url()
    if url:
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            log.warning("alert webhook failed: %s", exc)


DEFAULT_ARGS = {
    "owner": "segflow",
    "retries": task_retries(),
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=2),
    # Depth first: a task's priority grows along its run, so the next step of a started run goes before the first
    # step of another. A backfill's runs (10 active at once by default) then finish one after another and scoring
    # follows them, instead of every run waiting for the last one's stage (Airflow's default, "downstream").
    "weight_rule": "upstream",
    "on_failure_callback": on_failure_alert,
    # Progress lines for `segflow run` (no-ops in scheduled runs).
    "on_execute_callback": progress.on_start,
    "on_success_callback": progress.on_success,
}

AS_OF_PARAM_DOC = (
    "Date to compute everything as of (YYYY-MM-DD). Empty: derived from the run (see docs/architecture.md)."
)


def segflow_dag(dag_id: str, schedule, doc_md: str | None, tags: tuple[str, ...] = (), params: dict | None = None):
    """A DAG with the settings every segflow DAG shares: one active run at a time (DuckDB takes one
    writer, so backfills run day after day), no catch-up, retries/timeouts/alerts, and an `as_of` param."""
    from airflow.sdk import DAG, Param

    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params={"as_of": Param("", type="string", description=AS_OF_PARAM_DOC), **(params or {})},
        tags=["segflow", *tags],
        doc_md=doc_md,
    )
