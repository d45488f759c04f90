"""Delivering the stream's trigger transitions to the CRM table and activation files: consenting users only,
exactly once in effect (a redone delivery changes nothing), exits keep the entry's time and evidence."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from segflow.activation.triggers import deliver_triggers
from segflow.realtime.consumer import StreamKeys, redis_client
from segflow.serving.store import drop_prefix
from tests.serving.test_api import publish


@pytest.fixture
def delivery(make_settings, tmp_path, redis_url):
    prefix = f"segflow-test-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        tmp_path, tmp_path / "data", SEGFLOW__STREAM__URL=redis_url, SEGFLOW__STREAM__KEY_PREFIX=prefix
    )
    (tmp_path / "data").mkdir()
    publish(tmp_path / "serving")  # U000..U024, every third (U000, U003, ...) without marketing consent
    client = redis_client(redis_url)
    yield settings, client, StreamKeys(prefix)
    drop_prefix(client, prefix)


def transition(client, keys, user, change, at, evidence='{"points":8.0}', rule="high_intent_now"):
    client.xadd(keys.output, {"rule": rule, "user_id": user, "change": change, "at": at, "evidence": evidence})


def crm(settings) -> list[tuple]:
    path = settings.raw["writeback"]["crm_url"].split("sqlite:///", 1)[1]
    with sqlite3.connect(path) as con:
        return con.execute(
            "SELECT contact_id, trigger_name, active, entered_at, exited_at, evidence FROM crm_triggers ORDER BY 1, 2"
        ).fetchall()


def test_consenting_users_are_delivered_once_and_exits_keep_the_entry(delivery):
    settings, client, keys = delivery
    transition(client, keys, "U001", "entered", "2026-10-01T10:00:00Z")
    transition(client, keys, "U003", "entered", "2026-10-01T10:00:01Z")  # no marketing consent
    transition(client, keys, "U002", "entered", "2026-10-01T10:00:02Z", '{"x":"=HYPERLINK(1)"}', "cart_abandoned")
    first = deliver_triggers(settings)
    assert (first["entries"], first["delivered"], first["skipped_no_consent"], first["crm_rows"]) == (3, 2, 1, 2)
    assert crm(settings) == [
        ("U001", "high_intent_now", 1, "2026-10-01T10:00:00Z", None, '{"points":8.0}'),
        ("U002", "cart_abandoned", 1, "2026-10-01T10:00:02Z", None, '{"x":"=HYPERLINK(1)"}'),
    ]
    text = Path(first["files"][0]).read_text(encoding="utf-8")
    assert "U003" not in text and "cart_abandoned" in text and "high_intent_now" in text
    assert deliver_triggers(settings)["entries"] == 0  # nothing new
    transition(client, keys, "U001", "exited", "2026-10-01T10:30:00Z", '{"reason":"window elapsed"}')
    transition(client, keys, "U003", "exited", "2026-10-01T10:30:01Z", '{"reason":"window elapsed"}')
    assert deliver_triggers(settings)["delivered"] == 2  # exits always: consent or not
    expected = [
        ("U001", "high_intent_now", 0, "2026-10-01T10:00:00Z", "2026-10-01T10:30:00Z", '{"points":8.0}'),
        ("U002", "cart_abandoned", 1, "2026-10-01T10:00:02Z", None, '{"x":"=HYPERLINK(1)"}'),
        ("U003", "high_intent_now", 0, None, "2026-10-01T10:30:01Z", None),
    ]
    assert crm(settings) == expected
    # A delivery redone from the start (its checkpoint lost with a failed run) changes nothing.
    client.delete(keys.delivered)
    again = deliver_triggers(settings)
    assert again["entries"] == 5 and crm(settings) == expected
