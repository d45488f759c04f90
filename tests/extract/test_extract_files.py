"""File quirks real exports have: each is loaded correctly, quarantined with its reason, or refused naming the file."""

import gzip
from datetime import date, datetime

import duckdb
import pandas as pd
import pytest

from segflow.core.config import ConfigError
from segflow.extract import ExtractError, run_extract
from tests.conftest import audit_balances

DAY = date(2026, 3, 2)
HEADER = "order_id,customer_ref,order_ts,amount,currency,status,category,item_count"


def _orders(settings):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT * EXCLUDE (_source, _run_id, _loaded_at) FROM raw.transactions ORDER BY order_id"
        ).df()


def _quarantine(settings):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute("SELECT row_ref, column_name, reason FROM raw.quarantine ORDER BY row_ref").fetchall()


@pytest.fixture
def drop(tmp_path, sources_settings):
    """Write one day's transaction file (bytes or text) and return settings reading that folder."""
    folder = tmp_path / "drops"
    folder.mkdir()

    def factory(content, name=f"{DAY}.csv", **source_options):
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return sources_settings(
            {
                "transactions": {
                    "path": str(folder),
                    "pattern": ["*.csv", "*.csv.gz", "*.jsonl", "*.parquet"],
                    **source_options,
                }
            }
        ), path

    return factory


def test_utf8_bom_and_semicolons_and_reordered_and_extra_columns(drop):
    content = (
        "\ufeffcurrency;order_id;customer_ref;shop_note;order_ts;amount;status\n"
        "EUR;O1;C1;hello;2026-03-02T10:00:00;12.5;completed\n"
    )
    settings, _ = drop(content)
    result = run_extract(settings, DAY, "r")["transactions"]
    rows = _orders(settings)
    assert rows.loc[0, "order_id"] == "O1" and rows.loc[0, "currency"] == "EUR" and rows.loc[0, "amount"] == 12.5
    notes = result.details[0]["notes"]
    assert "delimiter ';'" in notes and "ignored columns: shop_note" in notes
    audit_balances(settings)


def test_quoted_newlines_keep_physical_line_numbers(drop):
    content = (
        f"{HEADER}\n"
        'O1,C1,2026-03-02T10:00:00,10,EUR,completed,"books\nand more",1\n'
        "O2,C1,not-a-time,10,EUR,completed,books,1\n"
    )
    settings, _ = drop(content)
    run_extract(settings, DAY, "r")
    assert _orders(settings).loc[0, "category"] == "books\nand more"
    assert _quarantine(settings) == [("line 4", "order_ts", "cannot parse 'not-a-time' as timestamp")]


def test_repeated_header_and_ragged_rows_are_quarantined(drop):
    content = (
        f"{HEADER}\nO1,C1,2026-03-02T10:00:00,10,EUR,completed,books,1\n{HEADER}\n"
        "O2,C1,2026-03-02T11:00:00,10\nO3,C1,2026-03-02T12:00:00,10,EUR,completed,books,1\n"
    )
    settings, _ = drop(content)
    result = run_extract(settings, DAY, "r")["transactions"]
    assert list(_orders(settings)["order_id"]) == ["O1", "O3"]
    assert _quarantine(settings) == [
        ("line 3", None, "repeated header row"),
        ("line 4", None, "expected 8 fields, found 4"),
    ]
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (4, 2, 2)


def test_non_utf8_bytes_refuse_the_file_unless_the_encoding_is_declared(drop):
    content = f"{HEADER}\nO1,C1,2026-03-02T10:00:00,10,EUR,completed,caf\xe9,1\n".encode("latin-1")
    settings, path = drop(content)
    with pytest.raises(
        ExtractError, match=rf"{path.name}: line 2: the bytes at offset \d+ are not valid utf-8.*encoding"
    ):
        run_extract(settings, DAY, "r")
    settings, _ = drop(content, encoding="latin-1")
    run_extract(settings, DAY, "r")
    assert _orders(settings).loc[0, "category"] == "café"


def test_mixed_offsets_and_epoch_timestamps_are_normalised_to_utc(drop):
    content = (
        f"{HEADER}\n"
        "O1,C1,2026-03-02T10:00:00+02:00,1,EUR,completed,a,1\n"
        "O2,C1,2026-03-02T10:00:00Z,1,EUR,completed,a,1\n"
        "O3,C1,2026-03-02 10:00:00-0500,1,EUR,completed,a,1\n"
        "O4,C1,1772445600,1,EUR,completed,a,1\n"
        "O5,C1,1772445600000,1,EUR,completed,a,1\n"
        "O6,C1,2026-03-02 10:00:00,1,EUR,completed,a,1\n"
    )
    settings, _ = drop(content)
    run_extract(settings, DAY, "r")
    got = dict(zip(_orders(settings)["order_id"], _orders(settings)["order_ts"], strict=True))
    assert got == {
        "O1": datetime(2026, 3, 2, 8),
        "O2": datetime(2026, 3, 2, 10),
        "O3": datetime(2026, 3, 2, 15),
        "O4": datetime(2026, 3, 2, 10),
        "O5": datetime(2026, 3, 2, 10),
        "O6": datetime(2026, 3, 2, 10),
    }


def test_empty_file_is_refused_unless_allowed(drop):
    settings, path = drop(b"")
    with pytest.raises(ExtractError, match=rf"{path.name}: empty file"):
        run_extract(settings, DAY, "r")
    settings, _ = drop(b"", allow_empty=True)
    assert run_extract(settings, DAY, "r")["transactions"].rows_in == 0
    assert [(batch, rows_in) for _, batch, rows_in, _, _ in audit_balances(settings)] == [(f"{DAY}.csv", 0)]
    settings, _ = drop(HEADER + "\n")  # a header and no rows: a day without orders, not an error
    assert run_extract(settings, DAY, "r")["transactions"].rows_in == 0


def test_gzip_is_read_and_a_truncated_gzip_refuses_the_whole_batch(drop, tmp_path):
    body = f"{HEADER}\n" + "".join(f"O{i},C1,2026-03-02T10:00:00,1,EUR,completed,a,1\n" for i in range(2000))
    packed = gzip.compress(body.encode())
    settings, path = drop(packed, name=f"{DAY}.csv.gz")
    assert run_extract(settings, DAY, "r")["transactions"].rows_loaded == 2000
    path.write_bytes(packed[: len(packed) // 2])
    (path.parent / "2026-03-01.csv").write_text(f"{HEADER}\nX1,C1,2026-03-01T10:00:00,1,EUR,completed,a,1\n")
    with pytest.raises(ExtractError, match=rf"{path.name}: truncated or corrupt gzip"):
        run_extract(settings, DAY, "r2")
    orders = _orders(settings)
    # Files are atomic one by one: the refused file keeps its last good load, the late file before it loaded.
    assert len(orders) == 2001 and "X1" in set(orders["order_id"]), "the refused file replaced nothing"
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        audit = con.execute("SELECT source_file, rows_loaded FROM raw.load_audit WHERE run_id = 'r2'").fetchall()
    assert audit == [("2026-03-01.csv", 1)], "only the file that loaded is audited for the failed run"


def test_truncated_last_csv_line_refuses_the_file(drop):
    settings, path = drop(f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,completed,a,1\nO2,C1,2026-03-0")
    with pytest.raises(ExtractError, match=rf"{path.name}: truncated file: the last line \(3\) has 3 of 8 fields"):
        run_extract(settings, DAY, "r")


def test_json_lines_and_parquet_files(drop, tmp_path):
    settings, _ = drop(
        '{"order_id": "J1", "customer_ref": "C1", "order_ts": "2026-03-02T10:00:00Z", "amount": 3.5, '
        '"currency": "EUR", "status": "completed", "extra": {"nested": true}}\n',
        name=f"{DAY}.jsonl",
    )
    run_extract(settings, DAY, "r")
    assert _orders(settings).loc[0, "amount"] == 3.5
    frame = pd.DataFrame(
        {
            "order_id": ["P1", "P2"],
            "customer_ref": [17850.0, None],
            "order_ts": pd.to_datetime(["2026-03-01 09:00"] * 2),
            "amount": [1.0, 2.0],
            "currency": ["EUR", "EUR"],
            "status": ["completed"] * 2,
        }
    )
    frame.to_parquet(tmp_path / "drops" / f"{DAY}.parquet")
    run_extract(settings, DAY, "r2")
    parquet_rows = _orders(settings).query("order_id == 'P1'")
    assert parquet_rows.iloc[0]["customer_ref"] == "17850" and parquet_rows.iloc[0]["order_ts"] == datetime(
        2026, 3, 1, 9
    )
    assert ("row 2", "customer_ref", "missing required value") in _quarantine(settings)
    audit_balances(settings)


def test_duplicate_column_names_are_refused(drop):
    settings, path = drop("order_id,Order_ID,customer_ref\n1,2,3\n")
    with pytest.raises(ExtractError, match=rf"{path.name}: duplicate column name 'Order_ID'"):
        run_extract(settings, DAY, "r")


def test_mapping_renames_parses_formats_maps_values_and_derives(drop):
    content = (
        "Invoice;Customer;Date;Qty;Price;State;Code\n"
        "536365;17850.0;01/03/2026 08:26;6;2,55;Paid;85123A\n"
        "C536379;17850.0;01/03/2026 09:41;-1;27,50;Paid;D\n"
        "536380;;01/03/2026 09:41;1;1,00;Paid;POST\n"
    )
    mapping = {
        "rename": {"Invoice": "order_id", "Date": "order_ts", "Qty": "item_count"},
        "constants": {"currency": "GBP"},
        "derive": {
            "amount": {"multiply": ["Qty", "Price"]},
            "customer_ref": {"integer": "Customer"},
            "status": {"prefix": {"column": "Invoice", "values": {"C": "cancelled"}, "default": "completed"}},
            "line_type": {
                "lookup": {"column": "Code", "values": {"D": "discount", "POST": "fee"}, "default": "product"}
            },
            "line_id": {"concat": ["Code", "Qty", "Price"]},
        },
        "formats": {"order_ts": "%d/%m/%Y %H:%M"},
        "timezone": "Europe/London",
        "decimal": ",",
    }
    settings, _ = drop(content, mapping=mapping)
    result = run_extract(settings, DAY, "r")["transactions"]
    rows = _orders(settings).set_index("order_id")
    assert rows.loc["536365", "amount"] == pytest.approx(15.3) and rows.loc["536365", "customer_ref"] == "17850"
    assert rows.loc["536365", "status"] == "completed" and rows.loc["C536379", "status"] == "cancelled"
    assert rows.loc["C536379", "amount"] == pytest.approx(-27.5) and rows.loc["C536379", "line_type"] == "discount"
    assert rows.loc["536365", "order_ts"] == datetime(2026, 3, 1, 8, 26)  # London is on UTC in March
    assert rows.loc["536365", "line_id"] == "85123A|6|2,55" and rows.loc["536365", "currency"] == "GBP"
    assert _quarantine(settings) == [("line 4", "customer_ref (from Customer)", "missing required value")]
    assert result.rows_in == 3 and "ignored columns: State" in result.details[0]["notes"]


def test_mapping_errors_name_the_source_and_key(sources_settings, tmp_path):
    settings = sources_settings({"transactions": {"path": str(tmp_path), "mapping": {"rename": {"x": "not_a_column"}}}})
    with pytest.raises(ValueError, match=r"sources.transactions.mapping.rename: \['not_a_column'\]"):
        run_extract(settings, DAY, "r")
    # A mistyped option is refused when the configuration is read, before anything runs.
    with pytest.raises(
        ConfigError, match=r"unknown key 'sources.transactions.pathh' \(did you mean 'sources.transactions.path'\?\)"
    ):
        sources_settings({"transactions": {"path": str(tmp_path), "pathh": "typo"}})


def test_value_mapping_normalises_status_spellings(drop):
    content = f"{HEADER}\nO1,C1,2026-03-02T10:00:00,1,EUR,BEZAHLT,a,1\nO2,C1,2026-03-02T10:00:00,1,EUR,storniert,a,1\n"
    settings, _ = drop(content, mapping={"values": {"status": {"bezahlt": "completed", "Storniert": "cancelled"}}})
    run_extract(settings, DAY, "r")
    assert list(_orders(settings)["status"]) == ["completed", "cancelled"]


def test_docs_state_the_contract_of_every_dataset():
    from segflow.core.config import REPO_ROOT
    from segflow.extract.contracts import DATASETS, contract_markdown

    doc = (REPO_ROOT / "docs" / "extracts.md").read_text()
    for dataset in DATASETS.values():
        assert contract_markdown(dataset) in doc, f"docs/extracts.md is out of date for {dataset.name}"


def test_partition_folders_and_gzipped_files_are_dated_by_their_path(sources_settings, tmp_path):
    folder = tmp_path / "orders"
    for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
        (folder / f"dt={day}").mkdir(parents=True)
        body = f"{HEADER}\nO-{day},C1,{day}T10:00:00,1,EUR,completed,a,1\n"
        (folder / f"dt={day}" / "part-0.csv.gz").write_bytes(gzip.compress(body.encode()))
    settings = sources_settings({"transactions": {"path": str(folder)}})
    result = run_extract(settings, DAY, "r")["transactions"]
    assert [d["batch"] for d in result.details] == ["dt=2026-03-01/part-0.csv.gz", "dt=2026-03-02/part-0.csv.gz"]
    assert list(_orders(settings)["_file_date"].astype(str)) == ["2026-03-01", "2026-03-02"]
