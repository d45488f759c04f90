import os
import shutil

import duckdb
import pytest

from segflow.extract import ExtractError, run_extract
from tests.conftest import AS_OF


def _audit(settings):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute("""SELECT source, sum(rows_in), sum(rows_loaded), sum(rows_quarantined)
                              FROM raw.load_audit GROUP BY 1 ORDER BY 1""").fetchall()


def test_every_row_is_loaded_or_quarantined_with_a_reason(tmp_path, dirty_dataset, make_settings):
    settings = make_settings(tmp_path, dirty_dataset)
    results = run_extract(settings, AS_OF, "run-1")
    for source, rows_in, loaded, quarantined in _audit(settings):
        assert rows_in == loaded + quarantined, source
    assert results["events"].rows_quarantined > 0 and results["transactions"].rows_quarantined > 0
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        reasons = dict(con.execute("SELECT column_name || ': ' || reason, count(*) FROM raw.quarantine GROUP BY 1").fetchall())
        sample = con.execute("SELECT source_file, row_ref, raw_record FROM raw.quarantine WHERE source = 'transactions' LIMIT 1").fetchall()[0]
        loaded_tx = con.execute("SELECT count(*) FROM raw.transactions").fetchall()[0][0]
    assert "amount: missing required value" in reasons
    assert "event_type: missing required value" in reasons
    assert sample[0].endswith(".csv") and int(sample[1]) >= 2 and "order_id" in sample[2]
    assert loaded_tx == results["transactions"].rows_loaded


def test_rerun_never_duplicates_and_changed_files_are_replaced(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    settings = make_settings(tmp_path, data)
    first = run_extract(settings, AS_OF, "run-1")
    second = run_extract(settings, AS_OF, "run-2")
    assert second["transactions"].files_loaded == 0 and second["transactions"].skipped_unchanged == 120
    # A late correction of one day's file replaces that day's rows.
    day_file = sorted((data / "transactions").glob("*.csv"))[-1]
    lines = day_file.read_text().splitlines()
    day_file.write_text("\n".join(lines[:2]) + "\n")
    os.utime(day_file, ns=(day_file.stat().st_atime_ns, day_file.stat().st_mtime_ns + 10**9))
    third = run_extract(settings, AS_OF, "run-3")
    assert third["transactions"].files_loaded == 1 and third["transactions"].rows_in == 1
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        n_orders, n_distinct = con.execute("SELECT count(*), count(DISTINCT order_id) FROM raw.transactions").fetchall()[0]
        contacts = con.execute("SELECT count(*) FROM raw.crm_contacts").fetchall()[0][0]
    assert n_orders == n_distinct == first["transactions"].rows_loaded - (len(lines) - 2)
    assert contacts == 400, "unchanged contact versions are not appended twice"


def test_only_files_dated_up_to_as_of_are_read(tmp_path, small_dataset, make_settings):
    from datetime import timedelta

    settings = make_settings(tmp_path, small_dataset)
    results = run_extract(settings, AS_OF - timedelta(days=10), "run-past")
    assert results["events"].files_loaded == 110


def test_missing_required_column_refuses_the_batch_naming_the_file(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    bad = sorted((data / "transactions").glob("*.csv"))[5]
    bad.write_text("order_id,amount\nO1,3.5\n")
    settings = make_settings(tmp_path, data)
    with pytest.raises(ExtractError, match=rf"{bad.name}.*customer_ref"):
        run_extract(settings, AS_OF, "run-bad")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.transactions").fetchall()[0][0] == 0, "nothing of the batch is loaded"


def test_invalid_json_line_is_a_clear_error(tmp_path, small_dataset, make_settings):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    bad = sorted((data / "events").glob("*.jsonl"))[0]
    bad.write_text("{not json\n")
    with pytest.raises(ExtractError, match=rf"{bad.name}: line 1"):
        run_extract(make_settings(tmp_path, data), AS_OF, "run-bad")
