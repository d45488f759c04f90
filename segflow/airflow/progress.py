"""Task progress for interactive runs: every task reports when it starts and ends (with what it did) so a long
`segflow run` is never silent.

The DAGs' default callbacks call `report()`. It writes one JSON line to the file descriptor named by
SEGFLOW_PROGRESS_FD, which only `segflow run` sets (it runs the DAGs in-process and prints the lines); in
scheduled runs the variable is absent and nothing happens. Light imports only: read at DAG parse time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

PROGRESS_FD_ENV = "SEGFLOW_PROGRESS_FD"
_started: dict[tuple[str, str], float] = {}


def summarise_result(value: Any) -> str | None:
    """A few words on what a task's return value says it did (rows, users, checks), or None."""
    if isinstance(value, list):
        parts = [part for part in (summarise_result(v) for v in value) if part]
        return "; ".join(parts) if parts else None
    if not isinstance(value, dict):
        return None
    if value and all(isinstance(v, dict) and "rows_loaded" in v for v in value.values()):  # extract: per source
        loaded = sum(int(v.get("rows_loaded") or 0) for v in value.values())
        quarantined = sum(int(v.get("rows_quarantined") or 0) for v in value.values())
        return f"{loaded:,} rows loaded, {quarantined:,} quarantined"
    if "checked" in value:
        return f"{value['checked']} checks, {value.get('warnings', 0)} warnings"
    if "users" in value:
        return f"{int(value['users']):,} users" + (f" as of {value['as_of']}" if value.get("as_of") else "")
    if "exported_users" in value:
        return (
            f"CRM +{value.get('crm_inserted', 0):,} ~{value.get('crm_updated', 0):,} -{value.get('crm_deleted', 0):,}, "
            f"{value['exported_users']:,} users exported"
        )
    if "clusterer" in value and "churn" in value:
        return ", ".join(
            f"{name} v{info.get('version')} @{info.get('alias')}"
            for name, info in (("clusterer", value["clusterer"]), ("churn", value["churn"]))
            if isinstance(info, dict)
        )
    if "skipped" in value:
        return f"skipped: {value['skipped']}"
    return None


def _emit(record: dict) -> None:
    fd = os.environ.get(PROGRESS_FD_ENV)
    if not fd:
        return
    with contextlib.suppress(OSError, ValueError):  # the reader is gone: progress is a courtesy, never a failure
        os.write(int(fd), (json.dumps(record, default=str) + "\n").encode())


def report(event: str, context: dict) -> None:
    """Report a task event ('start', 'success', 'failed') of the task in `context`."""
    if not os.environ.get(PROGRESS_FD_ENV):
        return
    ti = context.get("task_instance") or context.get("ti")
    key = (str(getattr(ti, "dag_id", "")), str(getattr(ti, "task_id", "")))
    record: dict[str, Any] = {"event": event, "dag_id": key[0], "task_id": key[1]}
    if event == "start":
        _started[key] = time.monotonic()
    else:
        began = _started.pop(key, None)
        record["seconds"] = None if began is None else round(time.monotonic() - began, 1)
    if event == "success" and ti is not None:
        try:
            record["summary"] = summarise_result(ti.xcom_pull(task_ids=key[1]))
        except Exception:  # noqa: BLE001 - no return value (dbt tasks) or no XCom backend at hand
            record["summary"] = None
    if event == "failed":
        record["error"] = str(context.get("exception") or "")[:2000]
    _emit(record)


def on_start(context) -> None:
    report("start", context)


def on_success(context) -> None:
    report("success", context)
