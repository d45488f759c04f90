"""Suites evaluated inside the warehouse: the same outcomes as GX's own pandas evaluation, without a frame."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from segflow.core.engines import DuckDBEngine
from segflow.extract import run_extract
from segflow.quality.gates import RAW_TABLES, raw_batch_sql, raw_parameters, validate_frame, validate_raw_tables
from segflow.quality.in_engine import literal, validate_relation
from tests.conftest import AS_OF


def _suite(folder, expectations, key="id"):
    folder.mkdir(exist_ok=True)
    (folder / "s.json").write_text(json.dumps({"name": "s", "meta": {"key_column": key}, "expectations": expectations}))


def _check(kind, severity="warning", **kwargs):
    return {"type": kind, "kwargs": kwargs, "meta": {"severity": severity}}


@pytest.fixture
def table():
    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT * FROM (VALUES
        ('a', 1.0, 'x', TIMESTAMP '2026-01-01'), ('b', -2.0, 'x', TIMESTAMP '2030-01-01'),
        ('c', NULL, 'y', NULL), ('c', 4.0, NULL, TIMESTAMP '2026-01-02'), (NULL, 5.0, 'z', TIMESTAMP '2026-01-03'))
        AS v(id, amount, kind, ts)""")
    yield con
    con.close()


def _outcomes(con, tmp_path, make_settings, expectations, parameters=None):
    folder = tmp_path / "suites"
    _suite(folder, expectations)
    settings = make_settings(tmp_path, tmp_path, SEGFLOW__QUALITY__EXPECTATIONS_DIR=str(folder))
    outcomes, _ = validate_relation(DuckDBEngine(con), "s", "SELECT * FROM t", [], settings, parameters)
    return outcomes


def test_row_checks_follow_gx_semantics(table, tmp_path, make_settings):
    outcomes = _outcomes(
        table,
        tmp_path,
        make_settings,
        [
            _check("expect_column_values_to_not_be_null", column="id"),
            _check("expect_column_values_to_not_be_null", column="id", mostly=0.8),
            _check("expect_column_values_to_be_unique", column="id"),
            _check("expect_column_values_to_be_between", column="amount", min_value=0),
            _check("expect_column_values_to_be_between", column="amount", min_value=0, mostly=0.75),
            _check("expect_column_values_to_be_in_set", column="kind", value_set=["x", "y"]),
            _check("expect_column_values_to_be_between", column="ts", max_value={"$PARAMETER": "max_ts"}),
            _check("expect_table_row_count_to_be_between", min_value=1, max_value=4),
            _check("expect_column_values_to_be_in_type_list", column="amount", type_list=["float64"]),
        ],
        {"max_ts": pd.Timestamp("2026-12-31")},
    )
    got = [(o.expectation, o.column, o.success, o.unexpected_count) for o in outcomes]
    assert got == [
        ("expect_column_values_to_not_be_null", "id", False, 1),
        ("expect_column_values_to_not_be_null", "id", True, 1),  # 4 of 5 present: 0.8
        ("expect_column_values_to_be_unique", "id", False, 2),  # both rows of a repeated value; null ignored
        ("expect_column_values_to_be_between", "amount", False, 1),  # the null amount is not unexpected
        ("expect_column_values_to_be_between", "amount", True, 1),  # 3 of 4 non-null: 0.75
        ("expect_column_values_to_be_in_set", "kind", False, 1),
        ("expect_column_values_to_be_between", "ts", False, 1),
        ("expect_table_row_count_to_be_between", None, False, None),
        ("expect_column_values_to_be_in_type_list", "amount", True, None),
    ]
    unique = outcomes[2]
    assert unique.sample_keys == ["c", "c"] and "2 unexpected of 5 (50.00%)" in unique.observed


def test_an_expectation_the_engine_cannot_evaluate_fails_loudly(table, tmp_path, make_settings):
    with pytest.raises(ValueError, match="expect_column_values_to_match_regex cannot be evaluated"):
        _outcomes(
            table, tmp_path, make_settings, [_check("expect_column_values_to_match_regex", column="id", regex="a")]
        )
    with pytest.raises(KeyError, match="max_ts"):
        _outcomes(
            table,
            tmp_path,
            make_settings,
            [_check("expect_column_values_to_be_between", column="ts", max_value={"$PARAMETER": "max_ts"})],
        )


def test_arguments_are_quoted_as_literals():
    assert literal("it's") == "'it''s'"
    assert literal(pd.Timestamp("2026-01-02 03:04:05")) == "TIMESTAMP '2026-01-02 03:04:05'"
    assert literal(True) == "TRUE" and literal(None) == "NULL" and literal(2) == "2"
    with pytest.raises(ValueError, match="non-finite"):
        literal(float("nan"))


def test_raw_suites_in_the_engine_equal_gx_on_defective_data(tmp_path, dirty_dataset, make_settings):
    """Every raw suite on the defective generated data: success and unexpected count of each expectation as GX's
    pandas engine finds them on the same batch pulled into a frame (the way the raw gate used to run)."""
    settings = make_settings(tmp_path, dirty_dataset)
    run_extract(settings, AS_OF, "run-1")
    params = raw_parameters(AS_OF)
    failures = 0
    for suite in RAW_TABLES:
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            sql = raw_batch_sql(DuckDBEngine(con), suite)
            engine, _ = validate_relation(DuckDBEngine(con), suite, sql, ["run-1"], settings, params[suite])
            frame = con.execute(sql, ["run-1"]).df()
        if "birth_date" in frame:
            frame["birth_date"] = pd.to_datetime(frame["birth_date"])
        gx = validate_frame(settings, suite, frame, params[suite])
        assert sorted((o.expectation, o.column or "", o.success, o.unexpected_count or 0) for o in engine) == sorted(
            (o.expectation, o.column or "", o.success, o.unexpected_count or 0) for o in gx
        ), suite
        failures += sum(not o.success for o in engine)
    assert failures >= 9, "the defective data fails expectations in every raw suite"


def test_the_raw_gate_shows_its_results_in_data_docs(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    run_extract(settings, AS_OF, "run-1")
    assert validate_raw_tables(settings, AS_OF, "run-1")["warnings"] == 0
    site = tmp_path / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"
    pages = {p.parent.parent.parent.name for p in (site / "validations").rglob("*.html")}
    assert {"raw_transactions", "raw_events", "raw_crm_contacts"} <= pages, pages
    assert "raw_events" in (site / "index.html").read_text()


def test_the_raw_suites_give_the_same_outcomes_on_postgresql(tmp_path, dirty_dataset, make_settings, postgres_url):
    """Every raw suite on the same defective rows, once in DuckDB and once in PostgreSQL (the loaded tables copied
    there): the batch SQL and the compiled checks are transpiled, the outcomes are equal."""
    from sqlalchemy import create_engine, text

    from segflow.core.engines import connect_engine

    settings = make_settings(tmp_path, dirty_dataset)
    run_extract(settings, AS_OF, "run-1")
    loader = create_engine(postgres_url)
    with loader.begin() as conn:
        conn.execute(text("CREATE SCHEMA raw"))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for table in RAW_TABLES.values():
            con.execute(f"SELECT * FROM raw.{table}").df().to_sql(table, loader, schema="raw", index=False)
    loader.dispose()
    found: dict[str, list] = {}
    for url in (settings.warehouse_url, postgres_url):
        with connect_engine(url) as engine:
            for suite, params in raw_parameters(AS_OF).items():
                outcomes, _ = validate_relation(
                    engine, suite, raw_batch_sql(engine, suite), ["run-1"], settings, params
                )
                found.setdefault(engine.dialect, []).extend(
                    (suite, o.expectation, o.column, o.success, o.unexpected_count, o.element_count) for o in outcomes
                )
    assert found["postgres"] == found["duckdb"]
    failed = {f[:3] for f in found["postgres"] if not f[3]}
    assert ("raw_crm_contacts", "expect_column_values_to_be_in_set", "email_is_valid") in failed  # the regex
    assert ("raw_transactions", "expect_column_values_to_be_in_set", "customer_known") in failed
    assert ("raw_events", "expect_column_values_to_be_between", "event_ts") in failed


def test_an_unknown_warehouse_url_is_refused():
    from segflow.core.engines import connect_engine

    with pytest.raises(ValueError, match="unsupported warehouse URL scheme 'mysql'"), connect_engine("mysql://x/db"):
        pass


def test_marts_suites_in_the_engine_equal_gx_on_defective_candidates(tmp_path, small_dataset, make_settings):
    """The marts gate's suites over audit candidates with planted defects (a missing user id, a repeated user, an
    out-of-range value, an unknown segment): the same outcome for every expectation as GX's pandas evaluation of
    the candidate pulled into a frame (the way the marts gate used to run)."""
    from segflow.core.dbt import DAILY_BUILD_EXCLUDE, audit_schema, dbt_vars, run_dbt

    settings = make_settings(tmp_path, small_dataset)
    run_extract(settings, AS_OF, "run-1")
    run_dbt(
        settings,
        ["build", "--exclude", *DAILY_BUILD_EXCLUDE, "--quiet"],
        vars=dbt_vars(str(AS_OF), settings),
    )
    schema = audit_schema(AS_OF.isoformat())
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute(f"UPDATE {schema}.audit_user_features SET user_id = NULL WHERE rowid = 0")
        con.execute(f"INSERT INTO {schema}.audit_user_features SELECT * FROM {schema}.audit_user_features LIMIT 2")
        con.execute(f"UPDATE {schema}.audit_user_features SET engagement_score = 150 WHERE rowid IN (3, 4)")
        con.execute(f"UPDATE {schema}.audit_user_features SET monetary_365d = -5 WHERE rowid = 5")
        con.execute(f"UPDATE {schema}.audit_user_features SET lifecycle_stage = 'zombie' WHERE rowid = 6")
        con.execute(f"UPDATE {schema}.audit_user_segments SET rule_name = 'Nobody' WHERE rowid < 3")
        known = [r[0] for r in con.execute("SELECT segment_name FROM reference.segment_rules").fetchall()]
    rules = {"marts_user_segments": {"segment_rules": known}}
    failures = 0
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for suite, table in (
            ("marts_user_features", "audit_user_features"),
            ("marts_user_segments", "audit_user_segments"),
        ):
            sql = f"SELECT * FROM {schema}.{table}"
            engine, _ = validate_relation(DuckDBEngine(con), suite, sql, [], settings, rules.get(suite))
            gx = validate_frame(settings, suite, con.execute(sql).df(), rules.get(suite))
            assert sorted(
                (o.expectation, o.column or "", o.success, o.unexpected_count or 0) for o in engine
            ) == sorted((o.expectation, o.column or "", o.success, o.unexpected_count or 0) for o in gx), suite
            failures += sum(not o.success for o in engine)
    assert failures == 6, "each planted defect fails its expectation, nothing else fails"
