"""The suites on generated data: clean data passes every suite; each injected defect class makes its
matching expectation fail (as a warning: parseable rows are judged, not refused)."""

from __future__ import annotations

from datetime import timedelta

import duckdb

from segflow.core.dbt import DAILY_BUILD_EXCLUDE, dbt_vars, run_dbt
from segflow.extract import run_extract
from segflow.quality.gates import validate_mart_tables, validate_raw_tables
from tests.conftest import AS_OF


def _results(settings, run_id):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT suite, expectation, column_name, severity, success FROM quality.validation_results "
            "WHERE run_id = ?",
            [run_id],
        ).fetchall()


def _pipeline_checks(settings, as_of=AS_OF):
    """What segflow_build does: extract, raw gate, dbt audit build, marts gate, publish."""
    run_extract(settings, as_of, "run-1")
    validate_raw_tables(settings, as_of, "run-1")
    variables = dbt_vars(as_of.isoformat(), settings)
    run_dbt(settings, ["build", "--exclude", *DAILY_BUILD_EXCLUDE, "--quiet"], vars=variables)
    validate_mart_tables(settings, as_of, "run-1")
    run_dbt(settings, ["build", "--select", "tag:publish", "--quiet"], vars=variables)
    return _results(settings, "run-1")


def test_clean_generated_data_passes_every_suite(tmp_path, small_dataset, make_settings):
    results = _pipeline_checks(make_settings(tmp_path, small_dataset))
    suites = {r[0] for r in results}
    assert suites == {
        "raw_transactions",
        "raw_events",
        "raw_crm_contacts",
        "marts_user_features",
        "marts_user_segments",
    }
    failed = [r for r in results if not r[4]]
    assert failed == []


def test_each_injected_defect_class_fails_its_expectation(tmp_path, dirty_dataset, make_settings):
    results = _pipeline_checks(make_settings(tmp_path, dirty_dataset))
    failed = {(suite, expectation, column) for suite, expectation, column, severity, success in results if not success}
    expected = {
        ("raw_crm_contacts", "expect_column_values_to_be_in_set", "email_is_valid"),  # malformed emails
        ("raw_crm_contacts", "expect_column_values_to_be_in_set", "email_shared"),  # case/whitespace duplicates
        ("raw_crm_contacts", "expect_column_values_to_be_between", "birth_date"),  # impossible ages
        ("raw_crm_contacts", "expect_column_values_to_not_be_null", "country"),  # missing values
        ("raw_transactions", "expect_column_values_to_be_between", "amount"),  # negative amounts
        ("raw_transactions", "expect_column_values_to_be_in_set", "currency"),  # unknown currencies
        ("raw_transactions", "expect_column_values_to_be_between", "order_ts"),  # future timestamps
        ("raw_transactions", "expect_column_values_to_be_in_set", "customer_known"),  # orders of unknown customers
        ("raw_events", "expect_column_values_to_be_between", "event_ts"),  # future timestamps
    }
    assert expected <= failed, expected - failed
    # Judged rows are warnings: nothing critical failed, the pipeline may continue (staging filters them).
    assert not [r for r in results if not r[4] and r[3] == "critical"]


def test_segment_sizes_are_compared_with_the_previous_run(tmp_path, small_dataset, make_settings):
    """The candidate's segment sizes against the latest date published before it (the day before here)."""
    settings = make_settings(tmp_path, small_dataset)
    _pipeline_checks(settings, AS_OF - timedelta(days=1))  # publishes marts: the "previous run"
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("UPDATE reference.segment_rules SET rule_sql = 'true' WHERE segment_name = 'Lapsed Users'")
    run_extract(settings, AS_OF, "run-2")
    run_dbt(
        settings,
        ["run", "--exclude", *DAILY_BUILD_EXCLUDE, "--quiet"],
        vars=dbt_vars(AS_OF.isoformat(), settings),
    )
    validate_mart_tables(settings, AS_OF, "run-2")
    sizes = [r for r in _results(settings, "run-2") if r[0] == "marts_segment_sizes"]
    assert ("marts_segment_sizes", "expect_column_values_to_be_between", "size_ratio", "warning", False) in sizes


def test_no_email_reaches_results_logs_or_data_docs(tmp_path, dirty_dataset, make_settings, caplog):
    """Malformed emails fail their expectation without the address appearing in quality.validation_results, the
    log or the GX Data Docs (they used to be listed as "unexpected values")."""
    import re

    settings = make_settings(tmp_path, dirty_dataset)
    with caplog.at_level("WARNING"):
        _pipeline_checks(settings)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        emails = {
            r[0]
            for r in con.execute("SELECT lower(trim(email)) FROM raw.crm_contacts WHERE email IS NOT NULL").fetchall()
        }
        stored = " ".join(
            str(v)
            for row in con.execute(
                "SELECT observed_value, unexpected_sample FROM quality.validation_results"
            ).fetchall()
            for v in row
        )
    assert any(" at " in e for e in emails), "the dirty data holds malformed emails"
    docs = " ".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "gx").rglob("*")
        if p.is_file() and p.suffix in (".html", ".json")
    )
    for text, where in ((stored, "validation_results"), (caplog.text, "the log"), (docs, "GX Data Docs")):
        leaked = [e for e in emails if e and re.search(re.escape(e), text.lower())]
        assert not leaked, f"{len(leaked)} email(s) in {where}, e.g. {leaked[:1]}"
