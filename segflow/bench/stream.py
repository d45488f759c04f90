"""The real-time trigger consumer under load: `segflow stream` in its own process, a publisher in this one.

Setup: a serving snapshot of `users` synthetic users (the identity graph the consumer resolves events with; every
fourth user lapsed) and a trigger state in Redis for every one of them (one recent event each, as a day of traffic
leaves it). Then:

1. **Latency at a target rate**: visits of random users - three events 1 ms apart (add_to_cart, begin_checkout,
   product_view: 8 behaviour points, so `high_intent_now` fires on the third) - published at `rate` events/s for
   `seconds`, event times stamped at publishing. Event-to-trigger latency = the output entry's Redis time (its id)
   minus the event time, over every entry that fired on an event (high_intent_now, lapsed_returning).
2. **Throughput**: `burst` more events appended as fast as Redis takes them; events/s = burst / time until the
   group has acknowledged them all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segflow.bench.serving import _percentile
from segflow.realtime.consumer import StreamKeys, redis_client
from segflow.realtime.engine import Event, UserState, to_us
from segflow.realtime.replay import group_lag
from segflow.serving.store import drop_prefix


def _snapshot(directory: Path, users: int) -> None:
    from segflow.serving import snapshot

    def profiles():
        for i in range(users):
            stage = "lapsed" if i % 4 == 0 else "active"
            yield f"U{i:07d}", f'{{"user_id":"U{i:07d}","lifecycle_stage":"{stage}","triggers":[]}}'

    rows = {
        "as_of": "2026-12-01",
        "profiles": profiles(),
        "identifiers": ((f"analytics_user_id:C{i:07d}", f"U{i:07d}") for i in range(users)),
        "segments": {},
        "members": iter(()),
    }
    snapshot.write_snapshot(rows, directory, "bench")
    snapshot.switch_to(directory, "bench")


def _seed_state(client, keys: StreamKeys, users: int, now_us: int) -> None:
    """One page view ten minutes ago per user: what their state holds after some traffic (TTL as configured)."""
    pipe = client.pipeline(transaction=False)
    for i in range(users):
        state = UserState([Event(now_us - 600_000_000, "page_view", None, f"seed{i}")], {}, now_us - 600_000_000)
        pipe.set(keys.state(f"U{i:07d}"), state.dumps(), ex=48 * 3600)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def _visit(rng: random.Random, users: int, n: int) -> list[dict[str, str]]:
    user = rng.randrange(users)
    now = time.time()
    return [
        {
            "event_id": f"b{n}-{j}",
            "anonymous_id": f"anon-{user}",
            "user_id": f"C{user:07d}",
            "event_ts": datetime.fromtimestamp(now + j / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event_type": kind,
            "product_category": "garden",
        }
        for j, kind in enumerate(("add_to_cart", "begin_checkout", "product_view"))
    ]


def run_stream_bench(
    redis_url: str, work_dir: Path, users: int = 1_000_000, rate: int = 5_000, seconds: float = 20, burst: int = 100_000
) -> dict[str, Any]:
    """Returns the setup time, the latency run (events, published_per_s, p50_ms, p99_ms, triggers) and the
    throughput run (events, events_per_s), and the consumer's Redis memory per user state."""
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"segflow-bench-stream-{os.getpid()}"
    keys = StreamKeys(prefix)
    client = redis_client(redis_url)
    group = "segflow-triggers"
    out: dict[str, Any] = {"users": users}
    t0 = time.perf_counter()
    _snapshot(work_dir / "serving", users)
    memory_before = client.info("memory")["used_memory"]
    _seed_state(client, keys, users, to_us(datetime.now(UTC)))
    out["state_bytes_per_user"] = round((client.info("memory")["used_memory"] - memory_before) / max(users, 1))
    out["setup_seconds"] = round(time.perf_counter() - t0, 1)
    env = {
        **os.environ,
        "SEGFLOW__STREAM__URL": redis_url,
        "SEGFLOW__STREAM__KEY_PREFIX": prefix,
        "SEGFLOW__STREAM__CLOCK": "wall",
        "SEGFLOW__STREAM__DROP_DIR": str(work_dir / "drop"),
        "SEGFLOW__SERVING__URL": "",
        "SEGFLOW__SERVING__SNAPSHOT_DIR": str(work_dir / "serving"),
    }
    log = open(work_dir / "stream-consumer.log", "w")  # noqa: SIM115 - the child writes to it
    consumer = subprocess.Popen(
        [sys.executable, "-m", "segflow.local.cli", "stream", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not client.exists(keys.events) or not client.xinfo_groups(keys.events):
            if consumer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"segflow stream did not start: see {work_dir / 'stream-consumer.log'}")
            time.sleep(0.1)
        rng = random.Random(11)
        # 1. Latency at the target rate, paced every 10 ms.
        sent, n = 0, 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            pipe = client.pipeline(transaction=False)
            while sent < due:
                for fields in _visit(rng, users, n):
                    pipe.xadd(keys.events, fields)
                sent += 3
                n += 1
            pipe.execute()
            time.sleep(0.01)
        published_s = time.perf_counter() - started
        deadline = time.monotonic() + 120
        while group_lag(client, keys, group) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the watermark passes the last events
        latencies = []
        counts: dict[str, int] = {}
        for entry_id, fields in client.xrange(keys.output):
            counts[fields["rule"] + ":" + fields["change"]] = counts.get(fields["rule"] + ":" + fields["change"], 0) + 1
            if fields["change"] == "entered" and fields["rule"] in ("high_intent_now", "lapsed_returning"):
                at_ms = to_us(datetime.fromisoformat(fields["at"].replace("Z", "+00:00"))) / 1000
                latencies.append(int(entry_id.split("-")[0]) - at_ms)
        out["latency_run"] = {
            "events": sent,
            "published_per_s": round(sent / published_s, 1),
            "p50_ms": _percentile(latencies, 0.5) if latencies else None,
            "p99_ms": _percentile(latencies, 0.99) if latencies else None,
            "max_ms": max(latencies, default=None),
            "triggers": counts,
        }
        # 2. Throughput: a burst appended as fast as Redis takes it.
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for _ in range(burst // 3):
            for fields in _visit(rng, users, n):
                pipe.xadd(keys.events, fields)
            n += 1
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()
        deadline = time.monotonic() + 600
        while group_lag(client, keys, group) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        took = time.perf_counter() - started
        out["throughput_run"] = {"events": (burst // 3) * 3, "events_per_s": round((burst // 3) * 3 / took, 1)}
        # Every event evaluated: none called late nor refused (they would be missing from the latency).
        out["dead_letters"] = client.xlen(keys.dead)
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.wait(60)
        except subprocess.TimeoutExpired:
            consumer.kill()
        log.close()
        drop_prefix(client, prefix)
    out["rows"] = out.get("latency_run", {}).get("events", 0) + out.get("throughput_run", {}).get("events", 0)
    out["consumer_log_tail"] = (work_dir / "stream-consumer.log").read_text()[-400:]
    return json.loads(json.dumps(out))
