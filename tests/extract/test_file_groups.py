"""Files loaded in groups (one transaction for consecutive files sharing their columns) give exactly what loading
them one by one gives: rows, quarantine, audit and ledger per file; a refusal or a crash inside a group is not lost."""

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

import segflow.extract.files as files
from segflow.extract import ExtractError, run_extract
from tests.conftest import AS_OF, audit_balances

TABLES = {
    "raw.transactions": "* EXCLUDE (_run_id, _loaded_at)",
    "raw.events": "* EXCLUDE (_run_id, _loaded_at)",
    "raw.quarantine": "* EXCLUDE (run_id, quarantined_at)",
    "raw.load_audit": "* EXCLUDE (run_id, loaded_at)",
    "raw.loaded_files": "* EXCLUDE (loaded_at, mtime_ns)",
}


def _snapshot(settings) -> dict[str, list[tuple]]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return {
            table: sorted(con.execute(f"SELECT {columns} FROM {table}").fetchall(), key=repr)
            for table, columns in TABLES.items()
        }


@pytest.fixture
def quirky_data(tmp_path, dirty_dataset) -> Path:
    """The dirty dataset with, among the transaction files, one whose columns are reordered with an extra one (it
    cannot share a group with its neighbours) and one with a ragged row and a repeated header."""
    data = tmp_path / "data"
    shutil.copytree(dirty_dataset, data)
    tx = sorted((data / "transactions").glob("*.csv"))
    header, *rows = tx[10].read_text().splitlines()
    names = header.split(",")
    order = list(reversed(range(len(names))))
    reorder = lambda line: ",".join([line.split(",")[i] for i in order] + ["x"])  # noqa: E731
    if all(len(r.split(",")) == len(names) for r in rows):
        tx[10].write_text("\n".join([",".join([names[i] for i in order] + ["note"]), *map(reorder, rows)]) + "\n")
    header, *rows = tx[20].read_text().splitlines()
    tx[20].write_text("\n".join([header, *rows[:3], "a,b", header, *rows[3:]]) + "\n")
    return data


def test_groups_load_exactly_what_file_by_file_loads(tmp_path, quirky_data, make_settings, monkeypatch):
    calls = []
    real = files.load_parts
    monkeypatch.setattr(files, "load_parts", lambda *a, **k: calls.append(len(a[6])) or real(*a, **k))

    monkeypatch.setattr(files, "GROUP_FILES", 1)
    one_by_one = make_settings(tmp_path / "single", quirky_data)
    run_extract(one_by_one, AS_OF, "run-single")
    assert set(calls) == {1}
    monkeypatch.setattr(files, "GROUP_FILES", 64)
    calls.clear()
    grouped = make_settings(tmp_path / "grouped", quirky_data)
    results = run_extract(grouped, AS_OF, "run-grouped")

    n_files = results["events"].files_loaded + results["transactions"].files_loaded
    assert max(calls) > 5 and len(calls) < n_files / 5, "files were loaded in groups"
    expected, got = _snapshot(one_by_one), _snapshot(grouped)
    for table in TABLES:
        assert got[table] == expected[table], table
    audit = audit_balances(grouped)
    assert len(audit) == n_files + 1, "one audit row per file (and the CRM batch)"
    quarantined = {r[1] for r in got["raw.quarantine"]}
    assert {"repeated header row", "expected 8 fields, found 2", "missing required value"} <= {
        r[4] for r in got["raw.quarantine"]
    } and len(quarantined) > 5


def test_a_refused_file_inside_a_group_keeps_the_files_before_it_and_a_rerun_resumes(
    tmp_path, small_dataset, make_settings, monkeypatch
):
    monkeypatch.setattr(files, "LOAD_WORKERS", 1)
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    tx = sorted((data / "transactions").glob("*.csv"))
    good = tx[5].read_text()
    tx[5].write_text(good.rstrip("\n") + "\nO-trunc,C1")  # a truncated last line refuses the file
    settings = make_settings(tmp_path, data)
    assert len(files.file_groups([(p, p.name, None, p.stat(), "") for p in tx], 1)[0]) > 6, "5 shares a group"
    with pytest.raises(ExtractError, match=rf"{tx[5].name}: truncated file"):
        run_extract(settings, AS_OF, "run-1", sources=("transactions",))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        ledger = {r[0] for r in con.execute("SELECT source_file FROM raw.loaded_files").fetchall()}
        loaded = {r[0] for r in con.execute("SELECT DISTINCT _source_file FROM raw.transactions").fetchall()}
    assert ledger == loaded == {p.name for p in tx[:5]}, "the files before the refused one, and only those"

    tx[5].write_text(good)
    os.utime(tx[5], ns=(tx[5].stat().st_atime_ns, tx[5].stat().st_mtime_ns + 10**9))
    again = run_extract(settings, AS_OF, "run-2", sources=("transactions",))
    assert again["transactions"].files_loaded == len(tx) - 5
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute(
            "SELECT count(*) - count(DISTINCT (order_id, line_id)) FROM raw.transactions"
        ).fetchone() == (0,)
        assert con.execute("SELECT count(DISTINCT source_file) FROM raw.loaded_files").fetchone() == (len(tx),)
    audit_balances(settings)


def test_a_crash_in_a_worker_fails_the_extract(tmp_path, small_dataset, make_settings, monkeypatch):
    """An unexpected error in one loading thread (not a refusal) is raised, not lost with its thread."""
    real = files._load_group
    seen = []

    def crash_second(con, spec, ctx, group):
        seen.append(group)
        if len(seen) == 2:
            raise RuntimeError("disk full")
        return real(con, spec, ctx, group)

    monkeypatch.setattr(files, "_load_group", crash_second)
    settings = make_settings(tmp_path, small_dataset)
    with pytest.raises(RuntimeError, match="disk full"):
        run_extract(settings, AS_OF, "run-1", sources=("events",))


def _item(name: str, size: int):
    return (Path(name), name, None, SimpleNamespace(st_size=size), "")


def test_file_groups_are_consecutive_and_bounded(monkeypatch):
    monkeypatch.setattr(files, "GROUP_BYTES", 1000)
    monkeypatch.setattr(files, "GROUP_FILES", 3)
    todo = [_item(f"{i}.csv", 100) for i in range(10)] + [_item("big.csv", 5000), _item("z.csv.gz", 100)]
    groups = files.file_groups(todo, workers=1)
    assert [item for group in groups for item in group] == todo, "every file once, in order"
    assert [len(g) for g in groups] == [3, 3, 3, 1, 1, 1]
    # Two workers: smaller groups, so both have several (a gzipped file counts 8x).
    sizes = [len(g) for g in files.file_groups([_item(f"{i}.csv", 100) for i in range(40)], workers=2)]
    assert len(sizes) >= 8 and sum(sizes) == 40
    assert [len(g) for g in files.file_groups([_item("a.csv.gz", 100), _item("b.csv.gz", 100)], 1)] == [1, 1]
