"""Extract on generated data: completeness, incrementality, idempotency, point in time."""

import os
import shutil
from datetime import timedelta

import duckdb
import pytest

from segflow.extract import ExtractError, run_extract
from tests.conftest import AS_OF, audit_balances


def _query(settings, sql, params=None):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_every_row_is_loaded_or_quarantined_with_a_reason(tmp_path, dirty_dataset, make_settings):
    settings = make_settings(tmp_path, dirty_dataset)
    results = run_extract(settings, AS_OF, "run-1")
    audit_balances(settings)
    assert results["events"].rows_quarantined > 0 and results["transactions"].rows_quarantined > 0
    reasons = dict(_query(settings, "SELECT column_name || ': ' || reason, count(*) FROM raw.quarantine GROUP BY 1"))
    # The generator's unparseable defects are quarantined at load (the others are flagged downstream:
    # see test_quality_on_data and test_dbt_models).
    assert "amount: missing required value" in reasons
    assert "event_type: missing required value" in reasons
    source_file, row_ref, raw_record = _query(
        settings, "SELECT source_file, row_ref, raw_record FROM raw.quarantine WHERE source = 'transactions' LIMIT 1"
    )[0]
    assert source_file.endswith(".csv") and row_ref.startswith("line ") and int(row_ref.split()[1]) >= 2
    assert "order_id" in raw_record
    loaded_tx = _query(settings, "SELECT count(*) FROM raw.transactions")[0][0]
    assert loaded_tx == results["transactions"].rows_loaded
    total_in = sum(r.rows_in for r in results.values())
    assert total_in == sum(r.rows_loaded + r.rows_quarantined for r in results.values())


def test_quarantined_line_is_the_physical_line_of_the_file(tmp_path, dirty_dataset, make_settings):
    settings = make_settings(tmp_path, dirty_dataset)
    run_extract(settings, AS_OF, "run-1")
    source_file, row_ref = _query(
        settings,
        """SELECT source_file, row_ref FROM raw.quarantine
                                                WHERE source = 'transactions' AND reason = 'missing required value' LIMIT 1""",
    )[0]
    line = (dirty_dataset / "transactions" / source_file).read_text().splitlines()[int(row_ref.split()[1]) - 1]
    assert ",," in line or line.count(",") == 7 and line.split(",")[3] == ""


def test_rerun_never_duplicates_and_changed_files_are_replaced(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    settings = make_settings(tmp_path, data)
    first = run_extract(settings, AS_OF, "run-1")
    second = run_extract(settings, AS_OF, "run-2")
    # Only the run's own day is reloaded (its interval is replaced); unchanged earlier files are skipped.
    assert second["transactions"].files_loaded == 1 and second["transactions"].details[0]["batch"] == f"{AS_OF}.csv"
    # A late correction of an earlier day's file replaces that day's rows.
    day_file = sorted((data / "transactions").glob("*.csv"))[-3]
    lines = day_file.read_text().splitlines()
    day_file.write_text("\n".join(lines[:2]) + "\n")
    os.utime(day_file, ns=(day_file.stat().st_atime_ns, day_file.stat().st_mtime_ns + 10**9))
    third = run_extract(settings, AS_OF, "run-3")
    assert {d["batch"] for d in third["transactions"].details} == {day_file.name, f"{AS_OF}.csv"}
    n_orders, n_distinct = _query(settings, "SELECT count(*), count(DISTINCT order_id) FROM raw.transactions")[0]
    assert n_orders == n_distinct == first["transactions"].rows_loaded - (len(lines) - 2)
    assert _query(settings, "SELECT count(*) FROM raw.crm_contacts")[0][0] == 400, (
        "contact versions are not appended twice"
    )
    audit_balances(settings)


def test_a_removed_file_of_the_runs_own_day_takes_its_rows_along(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    settings = make_settings(tmp_path, data)
    run_extract(settings, AS_OF, "run-1")
    (data / "transactions" / f"{AS_OF}.csv").rename(data / "transactions" / "misplaced.txt")
    run_extract(settings, AS_OF, "run-2")
    assert _query(settings, "SELECT count(*) FROM raw.transactions WHERE _file_date = ?", [AS_OF])[0][0] == 0


def test_only_files_dated_up_to_as_of_are_read_and_a_later_run_catches_up(tmp_path, small_dataset, make_settings):
    settings = make_settings(tmp_path, small_dataset)
    past = run_extract(settings, AS_OF - timedelta(days=10), "run-past")
    assert past["events"].files_loaded == 110
    assert _query(settings, "SELECT max(_file_date) FROM raw.events")[0][0] == AS_OF - timedelta(days=10)
    later = run_extract(settings, AS_OF, "run-now")
    assert later["events"].files_loaded == 10, "the nine missed days and the run's own"
    assert _query(settings, "SELECT count(*) - count(DISTINCT event_id) FROM raw.events")[0][0] == 0


def test_missing_required_column_refuses_the_batch_naming_the_file(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    bad = sorted((data / "transactions").glob("*.csv"))[5]
    bad.write_text("order_id,amount\nO1,3.5\n")
    settings = make_settings(tmp_path, data)
    with pytest.raises(ExtractError, match=rf"{bad.name}: missing required column\(s\) customer_ref"):
        run_extract(settings, AS_OF, "run-bad")
    assert _query(settings, "SELECT count(*) FROM raw.transactions WHERE _source_file = ?", [bad.name])[0][0] == 0, (
        "nothing of the refused file is loaded"
    )
    # Files are atomic one by one: those before it (and any loading beside it) stay loaded and recorded, so a
    # rerun resumes at the refused one.
    loaded = {r[0] for r in _query(settings, "SELECT source_file FROM raw.loaded_files WHERE source = 'transactions'")}
    assert loaded >= {p.name for p in sorted((data / "transactions").glob("*.csv"))[:5]} and bad.name not in loaded
    assert _query(settings, "SELECT count(DISTINCT _source_file) FROM raw.transactions")[0][0] == len(loaded)
    assert _query(settings, "SELECT count(*) FROM raw.events")[0][0] > 0, "other sources still load"


def test_invalid_json_line_is_quarantined_and_a_truncated_last_line_refuses_the_file(
    tmp_path, small_dataset, make_settings
):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    first = sorted((data / "events").glob("*.jsonl"))[0]
    lines = first.read_text().splitlines()
    first.write_text("\n".join([lines[0], "{not json", "[1, 2]", *lines[1:]]) + "\n")
    settings = make_settings(tmp_path, data)
    run_extract(settings, AS_OF, "run-1", sources=("events",))
    assert set(_query(settings, "SELECT row_ref, reason FROM raw.quarantine WHERE source_file = ?", [first.name])) == {
        ("line 2", "invalid JSON"),
        ("line 3", "not a JSON object"),
    }
    audit_balances(settings)
    last = sorted((data / "events").glob("*.jsonl"))[-1]
    content = last.read_text()
    last.write_text(content[: len(content) - 30])
    with pytest.raises(ExtractError, match=rf"{last.name}: truncated file: the last line \(\d+\) is incomplete JSON"):
        run_extract(settings, AS_OF, "run-2", sources=("events",))


def test_a_check_that_evaluates_to_null_refuses_the_batch_instead_of_dropping_rows(
    tmp_path, small_dataset, make_settings, monkeypatch
):
    """A row whose checks neither pass nor list it (a condition that is NULL) would be neither loaded nor
    quarantined: the batch is refused and nothing of it is loaded."""
    import segflow.extract.loader as loader

    checks = loader._checks
    monkeypatch.setattr(loader, "_checks", lambda plan, dataset: [*checks(plan, dataset), ("NULL", "'x'", "'x'")])
    settings = make_settings(tmp_path, small_dataset)
    with pytest.raises(ExtractError, match="neither loaded nor quarantined"):
        run_extract(settings, AS_OF, "run-1", sources=("transactions",))
    assert _query(settings, "SELECT count(*) FROM raw.transactions")[0][0] == 0
    assert _query(settings, "SELECT count(*) FROM raw.quarantine")[0][0] == 0
