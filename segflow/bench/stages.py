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
from segflow.core.dbt import SCHEDULED_BUILD_FLAGS


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
            "tag:training",
            "tag:publish",
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
