"""One benchmark stage, run in its own process so its CPU time and peak RSS are its own:

    python -m segflow.bench.stages STAGE AS_OF RESULT_JSON [--full-refresh]

Each stage calls what the corresponding Airflow task calls (segflow.airflow.callables) - the benchmark measures
the pipeline's own code, not a copy. Settings come from the environment the harness sets (SEGFLOW__...).
The stage's own facts (rows processed, outcome) are written to RESULT_JSON.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from segflow.airflow import callables
from segflow.core.config import Settings
from segflow.core.dbt import DAILY_BUILD_EXCLUDE, SCHEDULED_BUILD_FLAGS


def _count(settings: Settings, sql: str, params: list | None = None) -> int:
    from segflow.core.warehouse import connect

    with connect(settings.warehouse_path, read_only=True) as con:
        return int(con.execute(sql, params or []).fetchone()[0])


def _raw_rows(settings: Settings) -> int:
    """Rows in the raw layer (every source's records): what the raw gate and the dbt build read."""
    return _count(
        settings,
        "SELECT (SELECT count(*) FROM raw.events) + (SELECT count(*) FROM raw.transactions)"
        " + (SELECT count(*) FROM raw.crm_contacts)",
    )


def _users(settings: Settings, as_of: str) -> int:
    return _count(settings, "SELECT count(*) FROM marts.user_features_history WHERE as_of = ?::DATE", [as_of])


def extract(as_of: str, full_refresh: bool) -> dict[str, Any]:
    results = callables.extract(as_of, f"bench_{as_of}", full_refresh=full_refresh)
    rows_in = sum(r["rows_in"] for r in results.values())
    return {
        "rows": rows_in,
        "rows_loaded": sum(r["rows_loaded"] for r in results.values()),
        "rows_quarantined": sum(r["rows_quarantined"] for r in results.values()),
        "files": sum(r["files_loaded"] for r in results.values()),
    }


def validate_raw(as_of: str, full_refresh: bool) -> dict[str, Any]:
    callables.validate_raw(as_of, f"bench_{as_of}")
    settings = callables.settings()
    return {"rows": _raw_rows(settings)}


def _dbt(as_of: str, args: list[str]) -> dict[str, Any]:
    from segflow.core.dbt import dbt_vars, run_dbt

    settings = callables.settings()
    result = run_dbt(settings, args, vars=dbt_vars(as_of, settings))
    timings = {r.node.name: round(float(r.execution_time), 3) for r in result.results}
    return {"nodes": len(result.results), "node_seconds": dict(sorted(timings.items(), key=lambda kv: -kv[1])[:12])}


def dbt_build(as_of: str, full_refresh: bool) -> dict[str, Any]:
    # What the DAG's dbt_build task runs (see dags/segflow_build.py): candidates, segments and their tests.
    out = _dbt(
        as_of,
        [
            "build",
            "--exclude",
            *DAILY_BUILD_EXCLUDE,
            *SCHEDULED_BUILD_FLAGS,
            *(["--full-refresh"] if full_refresh else []),
        ],
    )
    settings = callables.settings()
    return {"rows": _raw_rows(settings), **out}


def validate_marts(as_of: str, full_refresh: bool) -> dict[str, Any]:
    from segflow.core.dbt import audit_schema

    callables.validate_marts(as_of, f"bench_{as_of}")
    settings = callables.settings()
    return {"rows": _count(settings, f"SELECT count(*) FROM {audit_schema(as_of)}.audit_user_features")}


def dbt_publish(as_of: str, full_refresh: bool) -> dict[str, Any]:
    out = _dbt(as_of, ["build", "--select", "tag:publish", *SCHEDULED_BUILD_FLAGS])
    callables.discard_candidates(as_of)
    return {"rows": _users(callables.settings(), as_of), **out}


def train(as_of: str, full_refresh: bool) -> dict[str, Any]:
    summary = callables.train(as_of)
    settings = callables.settings()
    rows = _count(settings, "SELECT count(*) FROM ml.churn_training_set")
    return {
        "rows": rows,
        "clusterer": {k: summary["clusterer"].get(k) for k in ("algorithm", "version", "alias")},
        "churn": {k: summary["churn"].get(k) for k in ("algorithm", "version", "alias")},
    }


def score(as_of: str, full_refresh: bool) -> dict[str, Any]:
    """callables.score's steps, each timed: read features + load champions + predict, the GX gate, publish."""
    from segflow.ml.scoring import compute_scores, publish_scores
    from segflow.quality.gates import validate_scores

    settings = callables.settings()
    day = date.fromisoformat(as_of)
    t0 = time.perf_counter()
    scores, _, _ = compute_scores(settings, day)
    t1 = time.perf_counter()
    validate_scores(settings, scores, day, f"bench_{as_of}")
    t2 = time.perf_counter()
    users = publish_scores(settings, scores, day)
    t3 = time.perf_counter()
    return {
        "rows": int(users),
        "compute_seconds": round(t1 - t0, 3),
        "validate_seconds": round(t2 - t1, 3),
        "publish_seconds": round(t3 - t2, 3),
        "compute_users_per_s": round(users / (t1 - t0), 1),
    }


def monitor(as_of: str, full_refresh: bool) -> dict[str, Any]:
    summary = callables.monitor(as_of)
    return {"rows": _users(callables.settings(), as_of), "warnings": len(summary.get("warnings", []))}


def write_back(as_of: str, full_refresh: bool) -> dict[str, Any]:
    result = callables.write_back(as_of)
    return {"rows": _users(callables.settings(), as_of), **{k: v for k, v in result.items() if isinstance(v, int)}}


def baseline_inputs(as_of: str, full_refresh: bool) -> dict[str, Any]:
    from segflow.bench.baseline import export_inputs

    settings = callables.settings()
    return export_inputs(settings, as_of, Path(settings.warehouse_path).parent / "baseline_inputs")


def pandas_baseline(as_of: str, full_refresh: bool) -> dict[str, Any]:
    from segflow.bench.baseline import compare_with_dbt, read_inputs, user_features_pandas

    settings = callables.settings()
    started = time.perf_counter()
    inputs = read_inputs(Path(settings.warehouse_path).parent / "baseline_inputs")
    features = user_features_pandas(inputs, date.fromisoformat(as_of))
    seconds = time.perf_counter() - started
    comparison = compare_with_dbt(settings, features, as_of)
    rows = sum(len(frame) for frame in inputs.values() if hasattr(frame, "__len__"))
    return {"rows": rows, "compute_seconds": round(seconds, 3), "users": len(features), **comparison}


def _bench_redis() -> str | None:
    """The Redis the serving stages also measure: SEGFLOW_BENCH_REDIS_URL, else the local default if it answers."""
    import os

    import redis

    url = os.environ.get("SEGFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError:
        return None
    return url


def _drop_prefix(url: str, prefix: str) -> None:
    import redis

    from segflow.serving.store import drop_prefix

    drop_prefix(redis.Redis.from_url(url), prefix)


def serving_sync(as_of: str, full_refresh: bool) -> dict[str, Any]:
    """The scoring DAG's sync_serving: the local snapshot, then the same version loaded into Redis (if one runs)."""
    import os

    from segflow.serving.store import RedisStore
    from segflow.serving.sync import sync

    settings = callables.settings()
    t0 = time.perf_counter()
    result = sync(settings)
    t1 = time.perf_counter()
    out: dict[str, Any] = {
        "rows": result["profiles"],
        "snapshot_seconds": round(t1 - t0, 3),
        "identifiers": result["identifiers"],
        "segments": result["segments"],
    }
    url = _bench_redis()
    if url:
        prefix = f"segflow-bench-{os.getpid()}"
        try:
            RedisStore(url, prefix).load(Path(result["snapshot"]), result["version"], grace_seconds=0)
            out["redis_load_seconds"] = round(time.perf_counter() - t1, 3)
        finally:
            _drop_prefix(url, prefix)
    return out


def serving_load(as_of: str, full_refresh: bool) -> dict[str, Any]:
    """`segflow serve` under load from this process: single lookups at 4 and 16 connections, batches of 100;
    then single lookups again with the Redis store (if one runs). SEGFLOW_BENCH_LOAD_SECONDS per run (10)."""
    import contextlib
    import os
    import socket
    import sqlite3

    from segflow.bench.serving import run_load, start_server, stop_server
    from segflow.serving import keys, snapshot
    from segflow.serving.store import RedisStore

    settings = callables.settings()
    seconds = float(os.environ.get("SEGFLOW_BENCH_LOAD_SECONDS", "10"))
    snapshot_dir = Path(settings.get("serving", "snapshot_dir"))
    version = snapshot.current_version(snapshot_dir)
    if version is None:
        raise RuntimeError("no serving snapshot: run serving_sync first")
    path = snapshot.snapshot_file(snapshot_dir, version)
    with contextlib.closing(sqlite3.connect(path)) as con:
        ids = [u for (u,) in con.execute("SELECT user_id FROM profiles ORDER BY random() LIMIT 100000")]
    key, _ = keys.create_key(Path(settings.get("serving", "keys_file")), keys.SCOPES, "bench", 10**9)

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def measure(env: dict[str, str], runs: dict[str, tuple[int, int]]) -> dict[str, Any]:
        port = free_port()
        server = start_server(port, env, log=snapshot_dir / f"bench-serve-{port}.log")
        try:
            return {
                name: run_load(f"http://127.0.0.1:{port}", key, ids, seconds, concurrency, batch)
                for name, (concurrency, batch) in runs.items()
            }
        finally:
            stop_server(server)

    out = measure({}, {"single_c4": (4, 0), "single_c16": (16, 0), "batch100_c4": (4, 100)})
    url = _bench_redis()
    if url:
        prefix = f"segflow-bench-{os.getpid()}"
        try:
            RedisStore(url, prefix).load(path, version, grace_seconds=0)
            env = {"SEGFLOW__SERVING__URL": url, "SEGFLOW__SERVING__KEY_PREFIX": prefix}
            out.update({f"redis_{k}": v for k, v in measure(env, {"single_c4": (4, 0)}).items()})
        finally:
            _drop_prefix(url, prefix)
    out["rows"] = sum(run["requests"] for run in out.values() if isinstance(run, dict))
    return out


def stream_load(as_of: str, full_refresh: bool) -> dict[str, Any]:
    """`segflow stream` under load (segflow.bench.stream) with SEGFLOW_BENCH_STREAM_USERS users' state (1M):
    latency at 5,000 events/s for SEGFLOW_BENCH_LOAD_SECONDS x 2 (20 s), then a burst for throughput."""
    import os

    from segflow.bench.stream import run_stream_bench

    url = _bench_redis()
    if url is None:
        return {"rows": 0, "skipped": "no Redis answers (SEGFLOW_BENCH_REDIS_URL)"}
    seconds = 2 * float(os.environ.get("SEGFLOW_BENCH_LOAD_SECONDS", "10"))
    users = int(os.environ.get("SEGFLOW_BENCH_STREAM_USERS", "1000000"))
    settings = callables.settings()
    work = Path(settings.get("serving", "snapshot_dir")).parent / "stream-bench"
    return run_stream_bench(url, work, users=users, rate=5_000, seconds=seconds, burst=min(100_000, 5 * users))


STAGES: dict[str, Callable[[str, bool], dict[str, Any]]] = {
    f.__name__: f
    for f in (
        extract,
        validate_raw,
        dbt_build,
        validate_marts,
        dbt_publish,
        train,
        score,
        monitor,
        write_back,
        baseline_inputs,
        pandas_baseline,
        serving_sync,
        serving_load,
        stream_load,
    )
}


def main(argv: list[str]) -> int:
    stage, as_of, result_file = argv[:3]
    full_refresh = "--full-refresh" in argv[3:]
    out = STAGES[stage](as_of, full_refresh)
    Path(result_file).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
