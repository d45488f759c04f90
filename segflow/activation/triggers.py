"""Deliver real-time triggers to the channels: the CRM's `crm_triggers` table and activation files.

The `segflow_activate` DAG runs this whenever the stream consumer announces new trigger transitions (an Airflow
AssetWatcher on its Redis channel). Each run takes the output stream's entries after the last delivered one, so a
lost announcement only delays delivery to the next run, and a run that failed midway is redone whole by the next:

- `crm_triggers`: one row per (user, trigger): active, entered_at, exited_at, evidence - upserted, so redoing a
  delivery changes nothing;
- `<export_dir>/triggers/date=<day>/triggers-<first entry>-<last entry>.csv`: the entries delivered together
  (entered and exited), cells escaped against spreadsheet formulas; a redone delivery rewrites the same file.
  Written under a temporary name and renamed.

Consent: entries are delivered only for users whose published profile allows marketing (a trigger is a campaign
audience); exits always are, so a withdrawn consent never leaves a CRM row active.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from segflow.activation.writeback import crm_insert, escape_formulas
from segflow.core.config import Settings

log = logging.getLogger(__name__)

FILE_COLUMNS = ["entry_id", "user_id", "rule", "change", "at", "evidence"]


def deliver_triggers(settings: Settings, client=None, max_entries: int = 100_000) -> dict:
    """Deliver the output stream's entries after the checkpoint.

    Args:
        settings: stream.url (the consumer's Redis), writeback.crm_url and writeback.export_dir.
        client: a Redis client (default: one on stream.url).
        max_entries: most entries per file (a run goes on until the stream is exhausted).

    Returns:
        {"entries", "delivered", "skipped_no_consent", "crm_rows", "files"} (and "gap_after" when entries after
        the checkpoint had been trimmed before this run).
    """
    from segflow.realtime.consumer import StreamKeys, redis_client
    from segflow.serving.store import open_store

    cfg = settings.raw["stream"]
    if client is None:
        if not cfg.get("url"):
            raise LookupError("stream.url is not set: there is no trigger stream to deliver from")
        client = redis_client(cfg["url"])
    keys = StreamKeys(cfg["key_prefix"])
    result: dict[str, Any] = {"entries": 0, "delivered": 0, "skipped_no_consent": 0, "crm_rows": 0, "files": []}
    store = open_store(settings)
    while True:
        last = client.get(keys.delivered)
        entries = client.xrange(keys.output, min=f"({last}" if last else "-", count=max_entries)
        if not entries:
            return result
        if last and not result["entries"]:
            first = client.xrange(keys.output, count=1)
            if first and first[0][0] > last and entries[0][0] == first[0][0]:
                # The output stream was trimmed past the checkpoint (the DAG paused for long): say so.
                log.warning("trigger entries between %s and %s were trimmed before delivery", last, first[0][0])
                result["gap_after"] = last
        with store.view() as view:
            if view is None:
                raise LookupError("no serving version is loaded: consent cannot be checked, nothing delivered")
            consent: dict[str, bool] = {}
            for _, fields in entries:
                user = fields["user_id"]
                if user not in consent:
                    profile = view.profile(user)
                    consent[user] = bool(profile and profile.get("consent", {}).get("marketing"))
        rows = []
        for entry_id, fields in entries:
            # Exits are always delivered: a CRM row left active after consent was withdrawn would keep a person in
            # an audience. Entries only with marketing consent.
            if fields["change"] == "entered" and not consent[fields["user_id"]]:
                result["skipped_no_consent"] += 1
                continue
            rows.append(
                {"entry_id": entry_id, **{k: fields[k] for k in ("user_id", "rule", "change", "at", "evidence")}}
            )
        if rows:
            frame = pd.DataFrame(rows, columns=FILE_COLUMNS)
            crm_url = settings.raw["writeback"].get("crm_url")
            if crm_url:
                result["crm_rows"] += upsert_crm_triggers(frame, crm_url)
            result["files"].append(write_trigger_file(frame, settings.raw["writeback"]["export_dir"]))
            result["delivered"] += len(rows)
        result["entries"] += len(entries)
        client.set(keys.delivered, entries[-1][0])
        log.info("triggers delivered: %s", result)


def upsert_crm_triggers(frame: pd.DataFrame, url: str, table: str = "crm_triggers") -> int:
    """Apply the transitions in order to the CRM table; returns the (user, trigger) rows written."""
    from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, Text, create_engine, func

    latest: dict[tuple[str, str], dict] = {}
    for row in frame.itertuples(index=False):
        key = (str(row.user_id), str(row.rule))
        current = latest.get(key, {"entered_at": None, "evidence": None})
        if row.change == "entered":
            current = {"active": True, "entered_at": row.at, "exited_at": None, "evidence": row.evidence}
        else:
            current = {**current, "active": False, "exited_at": row.at}
        latest[key] = {**current, "last_entry_id": row.entry_id}
    engine = create_engine(url)
    meta = MetaData()
    tbl = Table(
        table,
        meta,
        Column("contact_id", String(64), primary_key=True),
        Column("trigger_name", String(100), primary_key=True),
        Column("active", Boolean),
        Column("entered_at", String(32)),
        Column("exited_at", String(32)),
        Column("evidence", Text),
        Column("last_entry_id", String(40)),
        Column("synced_at", DateTime),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    values = [
        {"contact_id": user, "trigger_name": rule, "synced_at": now, **state}
        for (user, rule), state in sorted(latest.items())
    ]
    try:
        meta.create_all(engine)
        stmt = crm_insert(engine, tbl)
        # An exit whose entry was delivered earlier keeps that entry's time and evidence.
        update = {c: stmt.excluded[c] for c in ("active", "exited_at", "last_entry_id", "synced_at")}
        for column in ("entered_at", "evidence"):
            update[column] = func.coalesce(stmt.excluded[column], tbl.c[column])
        stmt = stmt.on_conflict_do_update(index_elements=["contact_id", "trigger_name"], set_=update)
        with engine.begin() as conn:
            conn.execute(stmt, values)
    finally:
        engine.dispose()
    return len(values)


def write_trigger_file(frame: pd.DataFrame, export_dir: str | Path) -> str:
    """One delivery's transitions as CSV (formula-escaped), named by its first and last entry."""
    first, last = frame["entry_id"].iloc[0], frame["entry_id"].iloc[-1]
    day = frame["at"].iloc[0][:10]
    folder = Path(export_dir) / "triggers" / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"triggers-{first}-{last}.csv"
    tmp = folder / f".{final.name}.tmp"
    escape_formulas(frame).to_csv(tmp, index=False, lineterminator="\r\n")
    os.replace(tmp, final)
    return str(final)
