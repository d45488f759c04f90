"""The warehouse engines: one query interface over DuckDB and PostgreSQL, with the same answers and dtypes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from segflow.core.engines import connect_engine, scalar

AWKWARD = pd.DataFrame(
    {
        "text": ["plain", "", None, "tab\there", "new\nline", "back\\slash \\N", 'quote " and %'],
        "number": [0.1 + 0.2, np.nan, -0.0, 1e-300, 123456789.123456789, np.inf, 2.5],
        "count": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"),
        "day": [dt.date(2026, 1, 1), None, dt.date(2026, 1, 2), dt.date(2026, 1, 3)] + [dt.date(2026, 1, 4)] * 3,
        "seen_at": pd.to_datetime(
            ["2026-01-01 10:00:00.123456", None] + [f"2026-01-0{i} 00:00:00.000000" for i in range(2, 7)]
        ),
    }
)


def _round_trip(url: str) -> pd.DataFrame:
    with connect_engine(url, read_only=False) as engine:
        engine.execute(
            "CREATE SCHEMA IF NOT EXISTS t; CREATE TABLE t.kept (text VARCHAR, number DOUBLE, count BIGINT, day DATE, seen_at TIMESTAMP)"
        )
        with engine.transaction(incoming=AWKWARD):
            engine.execute("INSERT INTO t.kept SELECT text, number, count, day, seen_at FROM incoming")
        with (
            pytest.raises(Exception, match="(?i)integer|bigint|convert"),
            engine.transaction(incoming=AWKWARD.assign(count="x")),
        ):
            engine.execute("INSERT INTO t.kept SELECT text, number, CAST(count AS BIGINT), day, seen_at FROM incoming")
        assert scalar(engine, "SELECT count(*) FROM t.kept WHERE text LIKE 'p%'") == 1  # `%` without parameters
        assert scalar(engine, "SELECT count(*) FROM t.kept WHERE text LIKE ?", ["%and%"]) == 1
        # Bulk append into the typed table (COPY on PostgreSQL), and the count of rows a DELETE removed.
        engine.append("t.kept", AWKWARD.assign(text="appended"))
        assert engine.changed("DELETE FROM t.kept WHERE text = ?", ["appended"]) == len(AWKWARD)
        return engine.frame("SELECT * FROM t.kept ORDER BY day NULLS FIRST, text")


def test_frames_round_trip_exactly_and_a_failed_transaction_leaves_nothing(tmp_path, postgres_url):
    """DataFrames written in a transaction and read back: NULL and '' kept apart, tabs, newlines and backslashes
    intact, floats to the last digit, dates and timestamps; a failing transaction writes nothing. PostgreSQL (COPY)
    gives what DuckDB (Arrow registration) gives."""
    on_duckdb = _round_trip(f"duckdb:///{tmp_path / 'w.duckdb'}")
    on_postgres = _round_trip(postgres_url)
    assert len(on_duckdb) == len(AWKWARD)
    pd.testing.assert_frame_equal(on_postgres, on_duckdb, check_dtype=False)
    assert on_postgres["text"].isna().sum() == 1 and (on_postgres["text"] == "").sum() == 1  # NULL is not ''
    assert set(AWKWARD["text"].dropna()) == set(on_postgres["text"].dropna())
    assert (on_postgres["number"] == 0.1 + 0.2).any() and np.isinf(on_postgres["number"]).any()
