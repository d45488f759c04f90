"""Erasure in the real-time stores: what `segflow stream` and the trigger delivery hold about a person.

Called by the build's apply_erasures (segflow.privacy.erasure) with the people it erases: their trigger state,
active triggers and timers; their entries in the output stream; dead letters whose raw fields name them (user id or
one of their devices); and their rows in the trigger activation files. The CRM's crm_triggers rows go with the
CRM write-back table's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segflow.core.config import Settings

SCAN_CHUNK = 10_000


def _scan_delete(client, stream: str, doomed) -> int:
    """XDEL every entry of `stream` for which doomed(fields) is true; returns how many."""
    removed, start = 0, "-"
    while True:
        entries = client.xrange(stream, min=start, count=SCAN_CHUNK)
        if not entries:
            return removed
        hits = [entry_id for entry_id, fields in entries if doomed(fields)]
        if hits:
            removed += client.xdel(stream, *hits)
        if len(entries) < SCAN_CHUNK:
            return removed
        start = "(" + entries[-1][0]


def erase_from_stream(settings: Settings, ids: list[str], anonymous: list[str]) -> dict[str, int]:
    """Forget the people (canonical/contact ids and their devices) in the stream's Redis and the trigger files.

    Returns:
        Counts removed: user keys (state, active triggers), output entries, dead letters, file rows.
    """
    from segflow.realtime.consumer import StreamKeys, redis_client

    out = {"user_keys": 0, "output": 0, "dead": 0, "file_rows": 0}
    if not ids and not anonymous:
        return out
    people, devices = set(ids), set(anonymous)
    url = settings.raw["stream"].get("url")
    if url:
        client = redis_client(url)
        keys = StreamKeys(settings.raw["stream"]["key_prefix"])
        pipe = client.pipeline(transaction=False)
        for user in people:
            pipe.delete(keys.state(user), keys.active(user))
            pipe.zrem(keys.timers, user)
        out["user_keys"] = sum(r for r in pipe.execute()[0::2] if isinstance(r, int))
        out["output"] = _scan_delete(client, keys.output, lambda f: f.get("user_id") in people)

        def names_them(fields: dict) -> bool:
            try:
                raw = json.loads(fields.get("raw") or "{}")
            except ValueError:
                return False
            return raw.get("user_id") in people or raw.get("anonymous_id") in devices

        out["dead"] = _scan_delete(client, keys.dead, names_them)
    folder = Path(settings.raw["writeback"]["export_dir"]) / "triggers"
    if folder.is_dir():
        import pandas as pd

        for path in sorted(folder.rglob("*.csv")):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            keep = ~frame["user_id"].isin(people)
            if keep.all():
                continue
            out["file_rows"] += int((~keep).sum())
            tmp = path.with_name(f".{path.name}.tmp")
            frame[keep].to_csv(tmp, index=False, lineterminator="\r\n")
            os.replace(tmp, path)
    return out
