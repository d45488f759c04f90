"""`segflow stream` against a live Redis: triggers within a second, dead letters with the batch's reasons, the
batch drop, the API showing active triggers, and a consumer killed mid-stream losing and repeating nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from segflow.core.config import REPO_ROOT
from segflow.realtime.consumer import StreamConsumer, StreamKeys, redis_client
from segflow.realtime.engine import Evaluator, Event, iso, to_us
from segflow.realtime.rules import intent_weights, load_rules
from segflow.serving import keys, snapshot
from segflow.serving.store import drop_prefix
from tests.serving.test_api import profile

USERS = 40


def publish_profiles(directory) -> None:
    """U000..U039; U00x is analytics user C00x and device anon-x; every fourth is lapsed; U039 has no tracking
    link (no consent): its events are never attributed."""
    docs = {}
    for i in range(USERS):
        doc = profile(f"U{i:03d}", True, ["General Audience"])
        doc["lifecycle_stage"] = "lapsed" if i % 4 == 0 else "active"
        docs[f"U{i:03d}"] = json.dumps(doc, separators=(",", ":"))
    identifiers = {}
    for i in range(USERS - 1):
        identifiers[f"analytics_user_id:C{i:03d}"] = f"U{i:03d}"
        identifiers[f"anonymous_id:anon-{i}"] = f"U{i:03d}"
    rows = {
        "as_of": "2026-09-30",
        "profiles": sorted(docs.items()),
        "identifiers": sorted(identifiers.items()),
        "segments": {},
        "members": [],
    }
    snapshot.write_snapshot(rows, directory, "v0001")
    snapshot.switch_to(directory, "v0001")


@pytest.fixture
def stream(make_settings, tmp_path, redis_url):
    prefix = f"segflow-test-{uuid.uuid4().hex[:8]}"
    drop = tmp_path / "drop"
    settings = make_settings(
        tmp_path,
        tmp_path / "data",
        SEGFLOW__STREAM__URL=redis_url,
        SEGFLOW__STREAM__KEY_PREFIX=prefix,
        SEGFLOW__STREAM__DROP_DIR=str(drop),
        SEGFLOW__STREAM__ALLOWED_LATENESS_SECONDS="0.3",
    )
    publish_profiles(tmp_path / "serving")
    client = redis_client(redis_url)
    yield {"settings": settings, "client": client, "keys": StreamKeys(prefix), "drop": drop, "tmp": tmp_path}
    drop_prefix(client, prefix)


def event(i: int, user: int, event_type: str, ts: datetime, category: str | None = "shoes", **extra) -> dict:
    fields = {
        "event_id": f"ev{i}",
        "anonymous_id": f"anon-{user}",
        "user_id": f"C{user:03d}",
        "session_id": f"s{user}",
        "event_ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": event_type,
    }
    if category:
        fields["product_category"] = category
    fields.update(extra)
    return fields


def test_a_trigger_fires_within_a_second_and_the_api_shows_it(stream):
    settings, client, k = stream["settings"], stream["client"], stream["keys"]
    consumer = StreamConsumer(settings)
    consumer.ensure_group()
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop.is_set,), daemon=True)
    worker.start()
    try:
        now = datetime.now(UTC)
        # U001 (analytics id C001): add_to_cart 3 + begin_checkout 4 + product_view 1 = 8 points > 7.
        for i, kind in enumerate(["add_to_cart", "begin_checkout", "product_view"]):
            client.xadd(k.events, event(i, 1, kind, now + timedelta(milliseconds=10 * i)))
        # Hostile and unknown input: the batch extract's reasons, and no trigger for an unattributed person.
        client.xadd(k.events, {**event(10, 2, "page_view", now), "event_id": "  "})
        client.xadd(k.events, event(11, 2, "page_view", now, event_ts="2026-13-45T99:00:00"))
        client.xadd(k.events, event(12, 2, "page_view", now, event_ts="infinity"))
        client.xadd(k.events, event(13, 2, "page_view", now, session_id="a\x00b"))
        for i in range(3):  # U039 gave no tracking consent: no link, never attributed
            client.xadd(k.events, event(20 + i, 39, "add_to_cart", now, anonymous_id="anon-39", user_id="C039"))
        published = time.monotonic()
        entered = None
        while time.monotonic() - published < 5 and entered is None:
            for entry_id, fields in client.xrange(k.output):
                if fields["rule"] == "high_intent_now" and fields["change"] == "entered":
                    entered = (entry_id, fields)
            time.sleep(0.01)
        latency = time.monotonic() - published
        assert entered is not None, "high_intent_now never fired"
        assert latency < 1.0, f"the trigger took {latency:.2f} s"
        assert entered[1]["user_id"] == "U001" and json.loads(entered[1]["evidence"])["points"] == 8.0
        time.sleep(0.5)
        dead = [fields for _, fields in client.xrange(k.dead)]
        assert [(d["column"], d["reason"]) for d in dead] == [
            ("event_id", "missing required value"),
            ("event_ts", "cannot parse '2026-13-45T99:00:00' as timestamp"),
            ("event_ts", "not a finite date or time"),
            ("session_id", "contains a NUL character"),
        ]
        assert {f["user_id"] for _, f in client.xrange(k.output)} == {"U001"}
        # The API answers U001's profile with the trigger, from the snapshot written before it fired.
        key, _ = keys.create_key(stream["tmp"] / "serving" / "api_keys.sqlite", keys.SCOPES, "t")
        from segflow.serving.api import create_app

        api = TestClient(create_app(settings))
        body = api.get("/v1/profiles/anonymous_id:anon-1", headers={"X-API-Key": key}).json()
        assert [t["rule"] for t in body["triggers"]] == ["high_intent_now"]
        assert body["triggers"][0]["evidence"]["points"] == 8.0
        assert api.get("/v1/profiles/U002", headers={"X-API-Key": key}).json()["triggers"] == []
    finally:
        stop.set()
        worker.join(10)
    # Every valid event reached the batch path (the drop), attributed or not; refused ones did not.
    lines = [json.loads(line) for path in stream["drop"].rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert sorted(r["event_id"] for r in lines) == ["ev0", "ev1", "ev2", "ev20", "ev21", "ev22"]


def workload(start: datetime) -> list[dict]:
    """3,000 events of 39 users over 4 hours of event time, strictly increasing times."""
    import random

    rng = random.Random(3)
    kinds = ["product_view"] * 10 + ["add_to_cart"] * 2 + ["begin_checkout", "purchase", "search", "page_view"]
    out = []
    for i in range(3000):
        ts = start + timedelta(seconds=i * 4.8, microseconds=rng.randrange(0, 1000))
        out.append(event(i, rng.randrange(USERS - 1), rng.choice(kinds), ts, rng.choice(["a", "b", "c"])))
    return out


def test_a_consumer_killed_mid_stream_loses_nothing_and_fires_nothing_twice(stream):
    client, k = stream["client"], stream["keys"]
    start = datetime(2026, 9, 30, 8, 0, tzinfo=UTC)
    rows = workload(start)
    for chunk in range(0, len(rows), 500):
        pipe = client.pipeline(transaction=False)
        for fields in rows[chunk : chunk + 500]:
            pipe.xadd(k.events, fields)
        pipe.execute()
    client.xadd(k.events, rows[100])  # a re-sent event
    env = {**os.environ, "SEGFLOW__STREAM__CLOCK": "events", "SEGFLOW__STREAM__BATCH_SIZE": "40"}

    def consumer() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "segflow.local.cli", "stream"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = consumer()
    deadline = time.monotonic() + 60
    while client.xlen(k.output) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no chance to finish its round
    first.wait(10)
    before = client.xlen(k.output)
    assert before > 0, "the first consumer produced nothing before it was killed"
    second = consumer()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            clock = client.hgetall(k.clock)
            info = {g["name"]: g for g in client.xinfo_groups(k.events)}["segflow-triggers"]
            if (
                info["pending"] == 0
                and info["lag"] == 0
                and int(clock.get("watermark", 0))
                >= to_us(datetime.fromisoformat(rows[-1]["event_ts"].replace("Z", "+00:00")))
            ):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the restarted consumer did not catch up")
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=30)
    assert second.returncode == 0, output
    got = [(f["rule"], f["user_id"], f["change"], f["at"]) for _, f in client.xrange(k.output)]
    assert len(got) == len(set(got)), "a transition was emitted twice"
    # The reference: every user's events evaluated in one pass, up to the last event's time.
    evaluator = Evaluator(load_rules(), intent_weights())
    from segflow.realtime.engine import UserState

    by_user: dict[str, list[Event]] = {}
    for fields in rows:
        user = f"U{int(fields['user_id'][1:]):03d}"
        ts = to_us(datetime.fromisoformat(fields["event_ts"].replace("Z", "+00:00")))
        by_user.setdefault(user, []).append(
            Event(ts, fields["event_type"], fields["product_category"], fields["event_id"])
        )
    until = max(e.ts for events in by_user.values() for e in events)
    stages = {f"U{i:03d}": ("lapsed" if i % 4 == 0 else "active") for i in range(USERS)}
    expected = [
        (t.rule, t.user_id, t.change, iso(t.at))
        for user, events in by_user.items()
        for t in Evaluator.advance(evaluator, user, UserState(), events, until, stages[user])
    ]
    assert len(expected) > 200
    assert sorted(got) == sorted(expected)
    # Nothing lost for the batch path either: every event is in the drop (the killed round's possibly twice).
    dropped = {
        json.loads(line)["event_id"]
        for p in stream["drop"].rglob("*.jsonl")
        for line in p.read_text().splitlines()
        if line.strip().startswith("{") and line.strip().endswith("}")
    }
    assert dropped == {r["event_id"] for r in rows}


def test_backpressure_holds_at_most_max_pending_and_leaves_the_rest_in_redis(stream, monkeypatch):
    from segflow.core.config import load_settings

    monkeypatch.setenv("SEGFLOW__STREAM__MAX_PENDING", "5")
    monkeypatch.setenv("SEGFLOW__STREAM__CLOCK", "events")
    monkeypatch.setenv("SEGFLOW__STREAM__ALLOWED_LATENESS_SECONDS", "3600")  # nothing gets evaluated here
    client, k = stream["client"], stream["keys"]
    start = datetime(2026, 9, 30, 8, 0, tzinfo=UTC)
    for i in range(50):
        client.xadd(k.events, event(i, 1, "product_view", start + timedelta(seconds=i)))
    consumer = StreamConsumer(load_settings(REPO_ROOT / "segflow.yml"))
    consumer.ensure_group()
    consumer.step(block_ms=0)
    info = {g["name"]: g for g in client.xinfo_groups(k.events)}["segflow-triggers"]
    assert len(consumer.pending_ids) <= 5 and info["lag"] == 45  # unread entries wait in Redis
    # A full buffer drains from its oldest events (time moves on to them), so the consumer never stalls.
    for _ in range(200):
        consumer.step(block_ms=0)
        assert len(consumer.pending_ids) <= 5
        info = {g["name"]: g for g in client.xinfo_groups(k.events)}["segflow-triggers"]
        if info["lag"] == 0:
            break
    assert info["lag"] == 0 and consumer.counters.late == 0


def test_erasure_forgets_a_person_in_every_real_time_store(stream):
    from segflow.realtime.erasure import erase_from_stream

    settings, client, k = stream["settings"], stream["client"], stream["keys"]
    consumer = StreamConsumer(settings)
    consumer.ensure_group()
    now = datetime.now(UTC)
    for user in (1, 2):
        for i, kind in enumerate(["add_to_cart", "begin_checkout", "product_view"]):
            client.xadd(k.events, event(10 * user + i, user, kind, now + timedelta(milliseconds=i)))
    client.xadd(k.events, event(99, 1, "page_view", now, event_ts="not a time"))  # a dead letter naming anon-1
    deadline = time.monotonic() + 5
    while client.xlen(k.output) < 2 and time.monotonic() < deadline:
        consumer.step(block_ms=10)
    exports = stream["tmp"] / "exports" / "triggers" / "date=x"
    exports.mkdir(parents=True)
    (exports / "t.csv").write_text("entry_id,user_id,rule\r\n1-0,U001,high_intent_now\r\n2-0,U002,high_intent_now\r\n")
    removed = erase_from_stream(settings, ["U001"], ["anon-1"])
    assert removed == {"user_keys": 2, "output": 1, "dead": 1, "file_rows": 1}
    assert {f["user_id"] for _, f in client.xrange(k.output)} == {"U002"}
    assert client.xlen(k.dead) == 0 and not client.exists(k.state("U001"), k.active("U001"))
    assert client.exists(k.state("U002")) and "U001" not in (exports / "t.csv").read_text()
