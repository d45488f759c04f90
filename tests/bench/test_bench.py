"""The benchmark's pure helpers: SQL semantics the pandas baseline reproduces (checked against DuckDB itself),
the growth exponent and the report."""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pytest

from segflow.bench.baseline import completed_years, ntile, round_half_away
from segflow.bench.harness import Measurement, cached_dataset, dag_seconds, dataset_params
from segflow.bench.report import growth_exponent, render, targets


@pytest.mark.parametrize("n", [0, 1, 4, 5, 7, 23, 101])
def test_ntile_matches_duckdb(n):
    rng = np.random.default_rng(n)
    frame = pd.DataFrame({"user_id": [f"u{i:04d}" for i in range(n)], "value": rng.integers(0, 4, n)})
    ours = ntile(frame, ["value", "user_id"], [False, True])
    sql = duckdb.sql("SELECT user_id, ntile(5) OVER (ORDER BY value DESC, user_id) AS t FROM frame").df()
    assert dict(zip(frame["user_id"], ours, strict=True)) == dict(zip(sql["user_id"], sql["t"], strict=True))


def test_round_half_away_matches_sql_round():
    values = np.array([0.125, 0.0625, 2.675, -1.005, 1.5, 2.5, 0.3125, 144.445, 1 / 3])
    frame = pd.DataFrame({"v": values})  # noqa: F841 - read by duckdb.sql by name
    for places in (1, 2, 3):
        sql = duckdb.sql(f"SELECT round(v, {places}) AS r FROM frame").df()["r"].to_numpy()
        assert np.array_equal(round_half_away(values, places), sql), places


def test_completed_years_matches_date_sub():
    births = pd.Series(pd.to_datetime(["1990-07-01", "1990-06-30", "2000-02-29", "1960-12-31", None]))
    as_of = date(2026, 6, 30)
    frame = pd.DataFrame({"b": births})  # noqa: F841 - read by duckdb.sql by name
    sql = duckdb.sql(f"SELECT date_sub('year', b::DATE, DATE '{as_of}') AS y FROM frame").df()["y"]
    ours = completed_years(births, as_of)
    assert [None if pd.isna(v) else int(v) for v in ours] == [None if pd.isna(v) else int(v) for v in sql]


def test_growth_exponent():
    assert growth_exponent([(10_000, 2.0), (100_000, 20.0), (1_000_000, 200.0)]) == pytest.approx(1.0)
    assert growth_exponent([(10, 5.0), (1000, 50.0)]) == pytest.approx(0.5)
    assert growth_exponent([(10, 5.0)]) is None


def test_dag_seconds_reads_segflow_run_output():
    out = "→ segflow_build …\n✓ segflow_build (46s)\n→ segflow_train …\n✓ segflow_train (40s)\n✓ segflow_score (3s)\n"
    assert dag_seconds(out) == {"segflow_build": 46, "segflow_train": 40, "segflow_score": 3}


def test_cached_dataset_requires_the_same_parameters(tmp_path):
    import json

    params = dataset_params(500, days=10)
    folder = tmp_path / "users-500-days-10"
    folder.mkdir()
    assert cached_dataset(tmp_path, params) is None, "no manifest: generation did not finish"
    (folder / "manifest.json").write_text(json.dumps({**params, "seed": params["seed"] + 1}))
    assert cached_dataset(tmp_path, params) is None, "another seed is another dataset"
    (folder / "manifest.json").write_text(json.dumps(params))
    assert cached_dataset(tmp_path, params) == folder


def _result(users: int, seconds: float) -> dict:
    stages = [
        Measurement(name, phase, seconds, seconds, 100.0 + users / 1000, users)
        for phase in ("full", "incremental")
        for name in ("extract", "validate_raw", "dbt_build", "validate_marts", "dbt_publish", "train", "score")
    ]
    stages[-5].wall_s = seconds / 20  # a fast incremental dbt_build
    stages.append(
        Measurement(
            "pandas_baseline",
            "baseline",
            1.0,
            1.0,
            10.0,
            users,
            {"compute_seconds": seconds * 6, "users": users, "equal": True, "columns_compared": 40, "mismatches": {}},
        )
    )
    stages.append(
        Measurement("segflow run", "airflow", seconds * 10, seconds, 50.0, None, {"dags": {"segflow_build": 1}})
    )
    return {
        "users": users,
        "dataset": {
            "users": users,
            "days": 366,
            "start_date": "2025-09-30",
            "end_date": "2026-09-30",
            "events": users * 30,
            "orders": users * 3,
        },
        "as_of": {"full": "2026-09-29", "incremental": "2026-09-30"},
        "measured_at": "2026-11-23T00:00:00+00:00",
        "machine": {
            "cores": 2,
            "memory_gb": 23.5,
            "cpu": "x",
            "os": "linux",
            "python": "3.11",
            "versions": {"duckdb": "2.0.0"},
        },
        "stages": [m.as_dict() for m in stages],
    }


def test_targets_and_report_from_results():
    results = [_result(10_000, 1.0), _result(100_000, 10.0)]
    by_name = {t.name: t for t in targets(results[-1], results)}
    assert (
        by_name["pandas baseline / dbt feature build"].measured == 6.0
        and by_name["pandas baseline / dbt feature build"].met
    )
    assert by_name["pandas baseline equals dbt output"].met is True
    assert by_name["growth exponent (whole pipeline, 10k → 1M)"].measured == pytest.approx(1.0)
    scoring = by_name["scoring (the whole stage: process start, models, predict, GX gate, publish)"]
    assert scoring.measured == 10_000.0 and scoring.met is False
    text = render(results, "## Notes\n\nprofiled.")
    assert "| dbt feature build (full refresh: a year of events de-duplicated again) | ≤ 60 s | 10.0 s | yes |" in text
    assert "| dbt feature build (daily, incremental) | ≤ 60 s | 0.5 s | yes |" in text
    assert "## 100,000 users" in text and "## 10,000 users" in text and text.rstrip().endswith("profiled.")
