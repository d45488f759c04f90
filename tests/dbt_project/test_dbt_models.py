"""The dbt project on DuckDB: builds with its data tests, and is point in time."""

from __future__ import annotations

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
        dup_evidence = con.execute(
            "SELECT count(*) FROM marts.user_identity_links WHERE evidence = 'duplicate contact sharing an email'"
        ).fetchall()[0][0]
        excluded = con.execute(
            "SELECT invalid_reason, count(*) FROM staging.stg_shop__transactions WHERE invalid_reason IS NOT NULL GROUP BY 1"
        ).fetchall()
        clear_pii = con.execute("""SELECT count(*) FROM information_schema.columns
                                   WHERE table_schema IN ('marts', 'ml') AND column_name IN ('email', 'phone', 'first_name', 'last_name')""").fetchall()[
            0
        ][0]
    assert {t for t, _ in links} >= {
        "crm_contact_id",
        "email_hash",
        "transaction_customer_ref",
        "analytics_user_id",
        "anonymous_id",
    }
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
            built = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                    [node["schema"], node["alias"]],
                ).fetchall()
            ]
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
                                   JOIN marts.user_features f USING (user_id) WHERE s.segment_name = 'Lapsed Users'""").fetchall()[
            0
        ][0]
    primaries = seg[seg["is_primary"]]
    assert len(primaries) == primaries["user_id"].nunique() == n_users
    assert lapsed_ok in (True, None)
    hv = seg[seg["rule_name"] == "At-Risk"]
    if len(hv):
        assert hv["evidence"].str.contains('"lifecycle_stage":"at_risk"').all()


def test_segment_thresholds_change_by_editing_the_seed_only(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    build(settings, AS_OF)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        before = con.execute(
            "SELECT count(*) FROM marts.user_segments WHERE rule_name = 'High Intent Shoppers'"
        ).fetchall()[0][0]
        con.execute(
            "UPDATE reference.segment_rules SET rule_sql = 'intent_score_30d > 1000' WHERE segment_name = 'High Intent Shoppers'"
        )
    run_dbt(
        settings,
        [
            "run",
            "--select",
            "audit_user_segments",
            "store_user_segment_history",
            "user_segment_history",
            "user_segments",
            "--quiet",
        ],
        vars=dbt_vars(AS_OF.isoformat(), settings),
    )
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        after = con.execute(
            "SELECT count(*) FROM marts.user_segments WHERE rule_name = 'High Intent Shoppers'"
        ).fetchall()[0][0]
    assert before > 0 and after == 0


def test_unit_tests_cover_every_feature_formula_and_segment_rule(tmp_path, small_dataset, make_settings):
    """The dbt unit tests (hand-computed expectations) run here, in CI, not in scheduled builds; they exist and pass."""
    settings = make_settings(tmp_path, small_dataset)
    build(settings, AS_OF)
    results = run_dbt(
        settings, ["test", "--select", "test_type:unit", "--quiet"], vars=dbt_vars(AS_OF.isoformat(), settings)
    )
    names = {r.node.name for r in results.results if str(r.status) == "pass"}
    assert {
        "rfm_scores_labels_and_lifecycle_stages",
        "engagement_score_intent_and_demographics",
        "engagement_features_are_null_without_an_analytics_source",
        "purchases_summarised_over_365_90_and_30_days",
        "engagement_counts_intent_points_and_abandoned_carts",
        "top_and_interest_categories",
        "most_frequent_channel_and_device_over_90_days",
        "every_seed_rule_with_its_threshold_and_priority",
        "buy_till_you_die_signal_interactions_and_loyal_newcomers",
        "interests_become_normalised_tags",
        "returns_latest_order_and_purchase_day_rate",
        "products_reach_recent_sales_and_rebuying",
        "money_is_summed_exactly",
        "implausible_amounts_are_invalid",
    } <= names
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
