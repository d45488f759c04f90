"""The stream's event checks give the batch extract's reasons: the same hostile rows, in a JSON-lines file through
the extract and as stream entries through check_event, are refused for the same column and reason."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pytest

from segflow.extract import run_extract
from segflow.extract.readers import MAX_FIELD_CHARS
from segflow.realtime.contract import Rejected, check_event

DAY = date(2026, 3, 2)
GOOD = {
    "event_id": "e0",
    "anonymous_id": "a1",
    "user_id": "C1",
    "session_id": "s1",
    "event_ts": "2026-03-02T10:00:00Z",
    "event_type": "page_view",
}
HOSTILE = [
    {**GOOD, "event_id": "e1", "event_type": "   "},
    {**GOOD, "event_id": "e2", "event_ts": "2026-13-45T99:00:00"},
    {**GOOD, "event_id": "e3", "event_ts": "infinity"},
    {**GOOD, "event_id": "e4", "session_id": "a\x00b"},
    {**GOOD, "event_id": "e5", "anonymous_id": ""},
    {**GOOD, "event_id": "e6", "product_category": "x" * (MAX_FIELD_CHARS + 1)},
    {**GOOD, "event_id": "e7", "event_ts": "2026-03-02 10:00:00+02:00"},  # valid: offsets honoured
]


@pytest.fixture
def batch_reasons(tmp_path, sources_settings):
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / f"{DAY}.jsonl").write_text("\n".join(json.dumps(r) for r in [GOOD, *HOSTILE]) + "\n")
    settings = sources_settings({"events": {"path": str(folder)}})
    run_extract(settings, DAY, "r")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        loaded = {r[0] for r in con.execute("SELECT event_id FROM raw.events").fetchall()}
        quarantined = con.execute("SELECT row_ref, reason FROM raw.quarantine ORDER BY row_ref").fetchall()
    return loaded, dict(quarantined)


def test_the_stream_refuses_what_the_batch_quarantines_for_the_same_reason(batch_reasons):
    loaded, quarantined = batch_reasons
    for line, row in enumerate([GOOD, *HOSTILE], start=1):
        try:
            check_event(row)
            stream = None
        except Rejected as exc:
            stream = exc.reason
        batch = quarantined.get(f"line {line}")
        assert (row["event_id"] in loaded) == (stream is None), row["event_id"]
        assert stream == batch, (row["event_id"], stream, batch)
