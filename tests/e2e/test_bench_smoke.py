"""Bench smoke: the harness runs every stage on a tiny dataset and writes its results and report. Numbers are
not asserted (benchmarks are not timed tests; `make bench` measures on real sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from segflow.bench.harness import FULL_STAGES, INCREMENTAL_STAGES, SERVING_STAGES
from tests.support.services import need

pytestmark = pytest.mark.e2e


def test_bench_harness_measures_every_stage_and_checks_the_baseline(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGFLOW", "AIRFLOW__", "DBT_"))}
    env["SEGFLOW_BENCH_LOAD_SECONDS"] = "1"  # the harness, not the numbers
    env["SEGFLOW_BENCH_STREAM_USERS"] = "3000"
    cmd = [
        sys.executable,
        "-m",
        "segflow.local.cli",
        "bench",
        "--sizes",
        "1200",
        "--days",
        "140",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--work-dir",
        str(tmp_path / "work"),
        "--results-dir",
        str(tmp_path / "results"),
        "--report",
        str(report),
        "--notes",
        str(tmp_path / "none.md"),
        "--skip-airflow",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((tmp_path / "results" / "users-1200.json").read_text())
    measured = {(s["phase"], s["stage"]): s for s in result["stages"]}
    expected = {
        ("data", "generate"),
        *(("full", s) for s in FULL_STAGES),
        *(("incremental", s) for s in INCREMENTAL_STAGES),
        *(("serving", s) for s in SERVING_STAGES),
        ("baseline", "baseline_inputs"),
        ("baseline", "pandas_baseline"),
    }
    assert set(measured) == expected
    for stage in measured.values():
        assert stage["wall_s"] > 0 and stage["cpu_s"] > 0 and stage["peak_rss_mb"] > 50, stage
    baseline = measured[("baseline", "pandas_baseline")]["details"]
    assert baseline["equal"], baseline["mismatches"]
    assert baseline["columns_compared"] == 64 and baseline["users"] == measured[("full", "score")]["rows"]
    # The incremental run loads only its new day; the full refresh loaded every day up to the full as-of date.
    assert measured[("incremental", "extract")]["details"]["files"] < measured[("full", "extract")]["details"]["files"]
    assert result["dataset"]["events"] > 0 and result["machine"]["cores"] == os.cpu_count()
    # The segment API stages: every published profile synced, lookups answered under load without an error.
    assert measured[("serving", "serving_sync")]["rows"] == measured[("incremental", "score")]["rows"]
    load = measured[("serving", "serving_load")]["details"]
    for run in ("single_c4", "single_c16", "batch100_c4"):
        assert load[run]["requests"] > 0 and load[run]["errors"] == {}, load[run]
    # The stream consumer: triggers fired during the paced run, the burst consumed, nothing called late.
    stream = measured[("serving", "stream_load")]["details"]
    need("skipped" not in stream, f"the stream stage was skipped: {stream.get('skipped')}")
    assert stream["users"] == 3000 and stream["latency_run"]["triggers"].get("high_intent_now:entered", 0) > 0
    assert stream["throughput_run"]["events"] > 0 and stream["dead_letters"] == 0, stream
    text = report.read_text()
    assert "## Targets at the largest size (1,200 users)" in text and "| full | dbt_build |" in text
    assert "segment API, single lookups" in text and "- Segment API (`segflow serve`" in text
    assert "real-time triggers, event-to-trigger p99" in text and "- Real-time triggers (`segflow stream`" in text
