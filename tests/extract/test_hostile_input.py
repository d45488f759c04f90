"""Hostile input: every physical line is loaded, quarantined with its reason, or the file is refused - and a
refusal names the file, never its data."""

from __future__ import annotations

import os
from datetime import date

import duckdb
import pytest

from segflow.extract import ExtractError, run_extract
from tests.conftest import audit_balances

DAY = date(2026, 3, 2)
HEADER = "order_id,customer_ref,order_ts,amount,currency,status,category,item_count"


def _rows(settings, sql):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def drop(tmp_path, sources_settings):
    folder = tmp_path / "drops"
    folder.mkdir()

    def factory(content, name=f"{DAY}.csv", dataset="transactions", **options):
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        patterns = ["*.csv", "*.jsonl", "*.csv.gz"]
        return sources_settings({dataset: {"path": str(folder), "pattern": patterns, **options}}), path

    return factory


def test_an_unbalanced_quote_loses_no_line(drop):
    # Line 4 opens a quoted last field that never closes: before, lines 5 and 6 vanished inside it.
    content = (
        f"{HEADER}\n"
        "O1,C1,2026-03-02T10:00:00,10,EUR,completed,books,1\n"
        'O2,C1,2026-03-02T10:00:00,11,EUR,completed,books,"2\n'
        "O3,C2,2026-03-02T11:00:00,12,EUR,completed,toys,1\n"
        "O4,C2,2026-03-02T12:00:00,13,EUR,completed,toys,1\n"
        'O5,C3,2026-03-02T13:00:00,14,EUR,completed,"garden\nand patio",1\n'
    )
    settings, _ = drop(content)
    result = run_extract(settings, DAY, "r")["transactions"]
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (5, 4, 1)
    assert _rows(settings, "SELECT order_id FROM raw.transactions ORDER BY 1") == [("O1",), ("O3",), ("O4",), ("O5",)]
    assert _rows(settings, "SELECT row_ref, reason FROM raw.quarantine") == [
        ("line 3", "unbalanced quote: a quoted field opened on this line does not close before the next row")
    ]
    # A quoted field that spans lines on purpose is one row.
    assert _rows(settings, "SELECT category FROM raw.transactions WHERE order_id = 'O5'") == [("garden\nand patio",)]
    audit_balances(settings)


@pytest.mark.parametrize("value", ["inf", "-Infinity", "NaN", "1e309", "nan"])
def test_non_finite_amounts_are_quarantined(drop, value):
    settings, _ = drop(
        f"{HEADER}\nO1,C1,2026-03-02T10:00:00,{value},EUR,completed,books,1\n"
        "O2,C1,2026-03-02T10:00:00,2.5,EUR,completed,books,1\n"
    )
    result = run_extract(settings, DAY, "r")["transactions"]
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert _rows(settings, "SELECT column_name, reason FROM raw.quarantine") == [("amount", "not a finite number")]
    assert _rows(settings, "SELECT count(*) FROM raw.transactions WHERE NOT isfinite(amount)") == [(0,)]


def test_a_huge_field_quarantines_its_row_not_the_file(drop):
    settings, _ = drop(
        f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,{'x' * 1_048_576},1\n"
        "O2,C1,2026-03-02T10:00:00,2,EUR,completed,books,1\n"
    )
    result = run_extract(settings, DAY, "r")["transactions"]
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    ((column, reason, raw),) = _rows(settings, "SELECT column_name, reason, raw_record FROM raw.quarantine")
    assert column == "category" and "exceeds the 262,144-character limit" in reason and len(raw) <= 2000


def test_json_keys_differing_only_in_case_are_one_column(drop):
    lines = [
        '{"event_id": "e1", "anonymous_id": "a", "event_ts": "2026-03-02T10:00:00", "event_type": "page_view", "device": "mobile"}',
        '{"event_id": "e2", "anonymous_id": "a", "event_ts": "2026-03-02T10:00:00", "event_type": "page_view", "Device": "tablet"}',
        '{"event_id": "e3", "anonymous_id": "a", "event_ts": "2026-03-02T10:00:00", "event_type": "page_view", "device": "x", "Device": "y"}',
    ]
    settings, _ = drop("\n".join(lines) + "\n", name=f"{DAY}.jsonl", dataset="events")
    result = run_extract(settings, DAY, "r")["events"]
    assert (result.rows_loaded, result.rows_quarantined) == (2, 1)
    assert _rows(settings, "SELECT event_id, device FROM raw.events ORDER BY 1") == [("e1", "mobile"), ("e2", "tablet")]
    assert _rows(settings, "SELECT row_ref, reason FROM raw.quarantine") == [
        ("line 3", "conflicting values under the keys 'device' and 'Device'")
    ]


def test_a_quoted_header_name_with_semicolons_keeps_the_comma(drop):
    header = HEADER.replace("category", '"category; free text"')
    settings, _ = drop(
        f"{header}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,books,1\n",
        mapping={"rename": {"category; free text": "category"}},
    )
    result = run_extract(settings, DAY, "r")["transactions"]
    assert result.rows_loaded == 1
    assert _rows(settings, "SELECT category FROM raw.transactions") == [("books",)]


def test_a_symlink_out_of_the_source_folder_is_not_followed_nor_echoed(drop, tmp_path):
    secret = tmp_path / "secrets.env"
    secret.write_text("AWS_SECRET_ACCESS_KEY=s3cr3t-value\n")
    settings, path = drop(f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,books,1\n")
    os.symlink(secret, path.parent / "2026-03-01.csv")
    with pytest.raises(ExtractError) as refused:
        run_extract(settings, DAY, "r")
    message = str(refused.value)
    assert "2026-03-01.csv" in message and "outside the source folder" in message
    assert "s3cr3t" not in message and "AWS_SECRET" not in message
    # The day's own file still loaded.
    assert _rows(settings, "SELECT order_id FROM raw.transactions") == [("O1",)]


def test_refusals_never_echo_data_values(drop):
    settings, _ = drop(b"order_id,customer_ref\nO1,\xff\xfesecret-token\n")
    with pytest.raises(ExtractError) as refused:
        run_extract(settings, DAY, "r")
    assert "secret" not in str(refused.value) and "xff" not in str(refused.value)
    assert "line 2" in str(refused.value)


def test_a_changed_file_with_the_same_size_and_mtime_is_reloaded(drop):
    first = f"{HEADER}\nO1,C1,2026-03-01T10:00:00,10,EUR,completed,books,1\n"
    settings, path = drop(first, name="2026-03-01.csv")
    run_extract(settings, DAY, "r1")
    stat = path.stat()
    path.write_text(first.replace("10,EUR", "90,EUR"))  # same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    run_extract(settings, DAY, "r2")
    assert _rows(settings, "SELECT amount FROM raw.transactions") == [(90.0,)]
    # An unchanged file is not reloaded.
    result = run_extract(settings, DAY, "r3")["transactions"]
    assert result.files_loaded == 0


def test_a_nul_character_quarantines_its_row(drop):
    settings, _ = drop(
        f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,bo\x00oks,1\n"
        "O2,C1,2026-03-02T10:00:00,2,EUR,completed,books,1\n"
    )
    result = run_extract(settings, DAY, "r")["transactions"]
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert _rows(settings, "SELECT column_name, reason FROM raw.quarantine") == [
        ("category", "contains a NUL character")
    ]
    audit_balances(settings)


def test_a_utf16_export_with_its_byte_order_mark_is_read(drop):
    settings, _ = drop(f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,café,1\n".encode("utf-16"))
    assert run_extract(settings, DAY, "r")["transactions"].rows_loaded == 1
    assert _rows(settings, "SELECT category FROM raw.transactions") == [("café",)]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_column_named_like_the_row_reference_refuses_the_file(drop, kind):
    """A source column `_row_ref` would replace the quarantine's line references with values from the file."""
    if kind == "csv":
        content = HEADER + ",_Row_Ref\nO1,C1,2026-03-02T10:00:00,1e999,EUR,completed,x,1,line 1\n"
    else:
        content = '{"event_id": "e1", "_row_ref": "line 1", "event_type": "page_view"}\n'
    settings, path = drop(content, name=f"{DAY}.{kind}", dataset="transactions" if kind == "csv" else "events")
    with pytest.raises(ExtractError, match=rf"{path.name}: the column name '_(R|r)ow_(R|r)ef' is reserved"):
        run_extract(settings, DAY, "run-1")
    assert _rows(settings, "SELECT count(*) FROM raw.quarantine") == [(0,)]
