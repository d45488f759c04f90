"""The dbt project on DuckDB: builds with its data tests, and is point in time."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pandas as pd
import pytest

from segflow.core.dbt import dbt_vars, run_dbt
from segflow.extract import run_extract
from tests.conftest import AS_OF


def build(settings, as_of, run_id="r"):
    run_extract(settings, as_of, run_id)
    run_dbt(settings, ["build", "--exclude", "tag:training", "--quiet"], vars=dbt_vars(as_of.isoformat(), settings))


def features(settings) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute("SELECT * FROM marts.user_features ORDER BY user_id").df()


def test_build_on_dirty_data_passes_all_data_tests(tmp_path, dirty_dataset, make_settings):
    settings = make_settings(tmp_path, dirty_dataset)
    build(settings, AS_OF)  # raises DbtError if any model or data test fails
    f = features(settings)
    assert f["user_id"].is_unique
    consenting = f["has_tracking_consent"].astype(bool)
    assert f.loc[consenting, "engagement_score"].between(0, 100).all()
    assert f.loc[~consenting, "engagement_score"].isna().all(), "no behaviour is used without tracking consent"
    assert consenting.sum() > len(f) / 2
    assert set(f["lifecycle_stage"]) <= {"prospect", "new", "active", "repeat", "loyal", "at_risk", "lapsed"}
    assert (f["age_band"] == "Unknown").any(), "impossible birth dates become 'Unknown'"
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        links = con.execute("SELECT identifier_type, count(*) FROM marts.user_identity_links GROUP BY 1").fetchall()
        dup_evidence = con.execute("SELECT count(*) FROM marts.user_identity_links WHERE evidence = 'duplicate contact sharing an email'").fetchall()[0][0]
        excluded = con.execute("SELECT invalid_reason, count(*) FROM staging.stg_shop__transactions WHERE invalid_reason IS NOT NULL GROUP BY 1").fetchall()
        clear_pii = con.execute("""SELECT count(*) FROM information_schema.columns
                                   WHERE table_schema IN ('marts', 'ml') AND column_name IN ('email', 'phone', 'first_name', 'last_name')""").fetchall()[0][0]
    assert {t for t, _ in links} >= {"crm_contact_id", "email_hash", "transaction_customer_ref", "analytics_user_id", "anonymous_id"}
    assert dup_evidence > 0, "case/whitespace duplicate contacts merge into one user"
    assert {r for r, _ in excluded} == {"unknown_currency", "negative_amount", "future_timestamp"}
    assert clear_pii == 0
    assert undocumented_columns(settings) == []


def undocumented_columns(settings) -> list[tuple[str, str]]:
    """Every column of every built model (and every model) has a description in the docs (manifest)."""
    import json

    from segflow.core.dbt import target_dir

    manifest = json.loads((target_dir() / "manifest.json").read_text())
    missing = []
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for node in manifest["nodes"].values():
            if node["resource_type"] != "model":
                continue
            documented = {name for name, col in node["columns"].items() if col.get("description")}
            built = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
                                               "AND table_name = ?", [node["schema"], node["alias"]]).fetchall()]
            if node["config"]["materialized"] == "ephemeral":
                built = list(node["columns"]) or ["<no columns documented>"]
            missing += [(node["name"], c) for c in built if c not in documented]
            if not node.get("description"):
                missing.append((node["name"], "<model description>"))
    return missing


def test_every_user_has_one_primary_segment_with_evidence(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    build(settings, AS_OF)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        seg = con.execute("SELECT * FROM marts.user_segments").df()
        n_users = con.execute("SELECT count(*) FROM marts.user_features").fetchall()[0][0]
        lapsed_ok = con.execute("""SELECT bool_and(lifecycle_stage = 'lapsed' OR (engagement_score < 20 AND recency_days > 30))
                                   FROM marts.user_segments s
                                   JOIN marts.user_features f USING (user_id) WHERE s.segment_name = 'Lapsed Users'""").fetchall()[0][0]
    primaries = seg[seg["is_primary"]]
    assert len(primaries) == primaries["user_id"].nunique() == n_users
    assert lapsed_ok in (True, None)
    hv = seg[seg["rule_name"] == "At-Risk"]
    if len(hv):
        assert hv["evidence"].str.contains('"lifecycle_stage":"at_risk"').all()


def test_a_past_date_reproduces_what_was_known_then(tmp_path, small_dataset, make_settings):
    """Features as of D built on D equal features as of D rebuilt later, after more data arrived."""
    past = AS_OF - timedelta(days=20)

    def partition(settings):
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            return con.execute("SELECT * FROM marts.user_features_history WHERE as_of = ? ORDER BY user_id", [past]).df()

    then = make_settings(tmp_path / "then", small_dataset)
    build(then, past)
    on_the_day = partition(then)
    later = make_settings(tmp_path / "later", small_dataset)
    build(later, AS_OF)  # the warehouse now holds 20 more days
    run_dbt(later, ["run", "--select", "tag:features", "audit_user_features", "store_user_features_history", "user_features_history", "--quiet"],
            vars=dbt_vars(past.isoformat(), later))
    rebuilt = partition(later)
    assert len(on_the_day) > 0
    pd.testing.assert_frame_equal(on_the_day.reset_index(drop=True), rebuilt.reset_index(drop=True))


def test_segment_thresholds_change_by_editing_the_seed_only(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    build(settings, AS_OF)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        before = con.execute("SELECT count(*) FROM marts.user_segments WHERE rule_name = 'High Intent Shoppers'").fetchall()[0][0]
        con.execute("UPDATE reference.segment_rules SET rule_sql = 'intent_score_30d > 1000' WHERE segment_name = 'High Intent Shoppers'")
    run_dbt(settings, ["run", "--select", "audit_user_segments", "store_user_segment_history", "user_segment_history", "user_segments", "--quiet"],
            vars=dbt_vars(AS_OF.isoformat(), settings))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        after = con.execute("SELECT count(*) FROM marts.user_segments WHERE rule_name = 'High Intent Shoppers'").fetchall()[0][0]
    assert before > 0 and after == 0


def test_segment_history_records_entries_exits_and_stability(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    first = AS_OF - timedelta(days=14)
    build(settings, first, "r1")
    build(settings, AS_OF, "r2")
    build(settings, AS_OF, "r3")  # a rerun of the same day replaces its partitions
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        history = con.execute("SELECT as_of, count(*), count(DISTINCT user_id) FILTER (WHERE is_primary) FROM marts.user_segment_history GROUP BY 1 ORDER BY 1").fetchall()
        current = con.execute("SELECT count(*) FROM marts.user_segments").fetchall()[0][0]
        events = con.execute("SELECT as_of, event, count(*) FROM marts.segment_membership_events GROUP BY ALL ORDER BY ALL").fetchall()
        entered_ok = con.execute("""
            SELECT count(*) FROM marts.segment_membership_events e
            WHERE e.as_of = ? AND e.event = 'entered' AND NOT EXISTS (
                SELECT 1 FROM marts.user_segment_history h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
        """, [AS_OF, AS_OF]).fetchall()[0][0]
        stability = con.execute("SELECT DISTINCT as_of, users_compared, users_moved, moved_share FROM marts.segment_sizes_over_time ORDER BY 1").fetchall()
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
        previous = con.execute("SELECT as_of, min(previous_as_of), max(previous_as_of) FROM marts.segment_membership_events "
                               "GROUP BY 1 ORDER BY 1").fetchall()
        wrong = con.execute("""
            WITH h AS (SELECT * FROM marts.user_segment_history)
            SELECT count(*) FROM marts.segment_membership_events e
            WHERE e.as_of = ? AND (
                (e.event = 'entered' AND (NOT EXISTS (SELECT 1 FROM h WHERE h.as_of = e.as_of AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
                                       OR EXISTS (SELECT 1 FROM h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name)))
             OR (e.event = 'exited' AND (EXISTS (SELECT 1 FROM h WHERE h.as_of = e.as_of AND h.user_id = e.user_id AND h.segment_name = e.segment_name)
                                      OR NOT EXISTS (SELECT 1 FROM h WHERE h.as_of = ? AND h.user_id = e.user_id AND h.segment_name = e.segment_name))))
        """, [AS_OF, middle, middle]).fetchall()[0][0]
        current = {r[0] for r in con.execute("SELECT DISTINCT as_of FROM marts.user_features UNION ALL "
                                             "SELECT DISTINCT as_of FROM marts.user_segments").fetchall()}
        leftover = con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_2%' "
                             "AND schema_name NOT LIKE '%_intermediate'").fetchall()[0][0]
    assert previous == [(first, None, None), (middle, first, first), (AS_OF, middle, middle)]
    assert wrong == 0
    assert current == {AS_OF}
    assert leftover == 3, "dbt alone leaves each date's candidates (the build DAG drops them once published)"


def test_unit_tests_cover_every_feature_formula_and_segment_rule(tmp_path, small_dataset, make_settings):
    """The dbt unit tests (hand-computed expectations) run here, in CI, not in scheduled builds; they exist and pass."""
    settings = make_settings(tmp_path, small_dataset)
    build(settings, AS_OF)
    results = run_dbt(settings, ["test", "--select", "test_type:unit", "--quiet"], vars=dbt_vars(AS_OF.isoformat(), settings))
    names = {r.node.name for r in results.results if str(r.status) == "pass"}
    assert {"rfm_scores_labels_and_lifecycle_stages", "engagement_score_intent_and_demographics",
            "engagement_features_are_null_without_an_analytics_source", "purchases_summarised_over_365_90_and_30_days",
            "engagement_counts_intent_points_and_abandoned_carts", "top_and_interest_categories",
            "most_frequent_channel_and_device_over_90_days", "every_seed_rule_with_its_threshold_and_priority",
            "buy_till_you_die_signal_interactions_and_loyal_newcomers", "interests_become_normalised_tags"} <= names
    import csv

    from segflow.core.resources import DBT_PROJECT_DIR

    with open(DBT_PROJECT_DIR / "seeds" / "segment_rules.csv") as handle:
        rules = {row["segment_name"] for row in csv.DictReader(handle)}
    unit_yml = (DBT_PROJECT_DIR / "models" / "audit" / "audit_user_segments.yml").read_text()
    for rule in rules - {"Interested in Category"}:
        assert f"segment_name: {rule}," in unit_yml, f"no unit-test expectation for the rule {rule!r}"


def test_amounts_are_converted_to_the_configured_reporting_currency(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset, SEGFLOW__FEATURES__REPORTING_CURRENCY="GBP")
    build(settings, AS_OF)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute("""SELECT currency, amount_local, amount_reporting FROM staging.stg_shop__transactions
                              WHERE currency IN ('EUR', 'GBP') AND amount_local > 10 LIMIT 200""").fetchall()
        rates = dict(con.execute("SELECT currency, units_per_eur FROM reference.currency_rates").fetchall())
    assert {c for c, _, _ in rows} == {"EUR", "GBP"}
    for currency, local, reporting in rows:
        assert reporting == pytest.approx(local / rates[currency] * rates["GBP"], abs=0.006)


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

    events_sql = ("SELECT * EXCLUDE (loaded_at) FROM staging.stg_analytics__events ORDER BY event_id")
    incremental_events, full_events = table(daily, events_sql), table(full, events_sql)
    assert len(incremental_events) == len(full_events) > 0
    assert (incremental_events["file_date"] == pd.Timestamp(late_day)).sum() == len(held_back)
    pd.testing.assert_frame_equal(incremental_events, full_events)
    features_sql = "SELECT * FROM marts.user_features ORDER BY user_id"
    pd.testing.assert_frame_equal(table(daily, features_sql), table(full, features_sql))
