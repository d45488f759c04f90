"""The dbt project over several days on DuckDB: a past date rebuilt later reproduces what was known then, segment
history across days, incremental event models equal a full refresh. Apart from test_dbt_models.py so the two halves
run side by side (each test builds the project several times)."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pandas as pd

from segflow.core.dbt import dbt_vars, run_dbt
from segflow.ml.train import FEATURE_PARTITION_MODELS
from tests.conftest import AS_OF
from tests.dbt_project.test_dbt_models import build


def test_a_past_date_reproduces_what_was_known_then(tmp_path, small_dataset, make_settings):
    """Features as of D built on D equal features as of D rebuilt later, after more data arrived."""
    past = AS_OF - timedelta(days=20)

    def partition(settings):
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            return con.execute(
                "SELECT * FROM marts.user_features_history WHERE as_of = ? ORDER BY user_id", [past]
            ).df()

    then = make_settings(tmp_path / "then", small_dataset)
    build(then, past)
    on_the_day = partition(then)
    later = make_settings(tmp_path / "later", small_dataset)
    build(later, AS_OF)  # the warehouse now holds 20 more days
    run_dbt(
        later,
        ["run", "--select", *FEATURE_PARTITION_MODELS, "--quiet"],
        vars=dbt_vars(past.isoformat(), later),
    )
    rebuilt = partition(later)
    assert len(on_the_day) > 0
    pd.testing.assert_frame_equal(on_the_day.reset_index(drop=True), rebuilt.reset_index(drop=True))


def test_segment_history_records_entries_exits_and_stability(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    first = AS_OF - timedelta(days=14)
    build(settings, first, "r1")
    build(settings, AS_OF, "r2")
    build(settings, AS_OF, "r3")  # a rerun of the same day replaces its partitions
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        history = con.execute(
            "SELECT as_of, count(*), count(DISTINCT user_id) FILTER (WHERE is_primary) FROM marts.user_segment_history GROUP BY 1 ORDER BY 1"
        ).fetchall()
        current = con.execute("SELECT count(*) FROM marts.user_segments").fetchall()[0][0]
        events = con.execute(
            "SELECT as_of, event, count(*) FROM marts.segment_membership_events GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        entered_ok = con.execute(
            """
            SELECT count(*) FROM marts.segment_membership_events e
            WHERE e.as_of = ? AND e.event = 'entered' AND NOT EXISTS (
                SELECT 1 FROM marts.user_segment_history h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
        """,
            [AS_OF, AS_OF],
        ).fetchall()[0][0]
        stability = con.execute(
            "SELECT DISTINCT as_of, users_compared, users_moved, moved_share FROM marts.segment_sizes_over_time ORDER BY 1"
        ).fetchall()
    assert [h[0] for h in history] == [first, AS_OF] and history[1][1] == current
    kinds = {(d, e) for d, e, _ in events}
    assert (first, "entered") in kinds and (AS_OF, "entered") in kinds and (AS_OF, "exited") in kinds
    assert entered_ok == 0, "an entered event always has the membership on that date"
    assert stability[0][1] == 0 and stability[0][3] is None
    assert stability[1][1] > 0 and 0 < stability[1][3] < 1

    # Backfilling a date in the gap: the later date's events are recomputed against it, and the current
    # tables stay on the latest date.
    middle = AS_OF - timedelta(days=7)
    build(settings, middle, "r4")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        previous = con.execute(
            "SELECT as_of, min(previous_as_of), max(previous_as_of) FROM marts.segment_membership_events "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
        wrong = con.execute(
            """
            WITH h AS (SELECT * FROM marts.user_segment_history)
            SELECT count(*) FROM marts.segment_membership_events e
            WHERE e.as_of = ? AND (
                (e.event = 'entered' AND (NOT EXISTS (SELECT 1 FROM h WHERE h.as_of = e.as_of AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
                                       OR EXISTS (SELECT 1 FROM h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name)))
             OR (e.event = 'exited' AND (EXISTS (SELECT 1 FROM h WHERE h.as_of = e.as_of AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
                                      OR NOT EXISTS (SELECT 1 FROM h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name))))
        """,
            [AS_OF, middle, middle],
        ).fetchall()[0][0]
        current = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT as_of FROM marts.user_features UNION ALL "
                "SELECT DISTINCT as_of FROM marts.user_segments"
            ).fetchall()
        }
        leftover = con.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_2%' "
            "AND schema_name NOT LIKE '%_intermediate'"
        ).fetchall()[0][0]
    assert previous == [(first, None, None), (middle, first, first), (AS_OF, middle, middle)]
    assert wrong == 0
    assert current == {AS_OF}
    assert leftover == 3, "dbt alone leaves each date's candidates (the build DAG drops them once published)"


def test_incremental_event_models_equal_a_full_refresh(tmp_path, small_dataset, make_settings):
    """Daily incremental builds (with a late file for an earlier day) give the tables a full build gives."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    late_day = AS_OF - timedelta(days=2)
    late_file = data / "events" / f"{late_day}.jsonl"
    held_back = late_file.read_text().splitlines()
    late_file.write_text("\n".join(held_back[: len(held_back) // 2]) + "\n")  # half of that day arrives late
    daily = make_settings(tmp_path / "daily", data)
    for offset in range(5, -1, -1):
        build(daily, AS_OF - timedelta(days=offset), run_id=f"day-{offset}")
    late_file.write_text("\n".join(held_back) + "\n")
    build(daily, AS_OF, run_id="rerun-with-late-file")
    full = make_settings(tmp_path / "full", data)
    build(full, AS_OF)

    def table(settings, sql):
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            return con.execute(sql).df()

    events_sql = "SELECT * EXCLUDE (loaded_at) FROM staging.stg_analytics__events ORDER BY event_id"
    incremental_events, full_events = table(daily, events_sql), table(full, events_sql)
    assert len(incremental_events) == len(full_events) > 0
    assert (incremental_events["file_date"] == pd.Timestamp(late_day)).sum() == len(held_back)
    pd.testing.assert_frame_equal(incremental_events, full_events)
    features_sql = "SELECT * FROM marts.user_features ORDER BY user_id"
    pd.testing.assert_frame_equal(table(daily, features_sql), table(full, features_sql))
