"""segflow datasets fetch: download, checksum, conversion and licence credit - against a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from segflow.local import datasets

ROWS = [
    (
        "536365",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        6,
        datetime(2010, 12, 1, 8, 26),
        2.55,
        17850.0,
        "United Kingdom",
    ),
    ("C536379", "D", "Discount", -1, datetime(2010, 12, 1, 9, 41), 27.5, 14527.0, "United Kingdom"),
    ("536414", "22139", None, 56, datetime(2010, 12, 1, 11, 52), 0.0, None, "United Kingdom"),
]
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def small_archive(folder: Path) -> Path:
    """An archive shaped like the publisher's: 'Online Retail.xlsx' inside a zip."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(COLUMNS)
    for row in ROWS:
        sheet.append(list(row))
    workbook = folder / "Online Retail.xlsx"
    book.save(workbook)
    archive = folder / "online+retail.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(workbook, "Online Retail.xlsx")
    return archive


@pytest.fixture
def served(tmp_path):
    """The small archive on a local HTTP server: (url, sha256)."""
    public = tmp_path / "public"
    public.mkdir()
    archive = small_archive(public)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(public), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{archive.name}", hashlib.sha256(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()


def test_fetch_downloads_verifies_converts_and_credits(tmp_path, served):
    url, digest = served
    lines: list[str] = []
    result = datasets.fetch("online-retail", tmp_path / "data", url=url, sha256=digest, progress=lines.append)
    frame = pd.read_parquet(result.path)
    assert result.rows == len(frame) == 3 and result.downloaded
    assert list(frame.columns) == COLUMNS
    # The shapes the example mapping reads: codes as text, the time as 'YYYY-MM-DD HH:MM:SS', a float customer id.
    assert frame["InvoiceNo"].tolist() == ["536365", "C536379", "536414"]
    assert frame["InvoiceDate"].tolist()[0] == "2010-12-01 08:26:00"
    assert frame["CustomerID"].iloc[0] == 17850.0 and pd.isna(frame["CustomerID"].iloc[2])
    assert str(frame["Quantity"].dtype) == "int64"
    provenance = (tmp_path / "data" / "PROVENANCE.md").read_text()
    assert "CC BY 4.0" in provenance and "10.24432/C5BW33" in provenance and digest in provenance
    assert any(line.startswith("verified SHA-256") for line in lines)
    # Fetched once: a second call keeps the file.
    again = datasets.fetch("online-retail", tmp_path / "data", url=url, sha256=digest)
    assert not again.downloaded and again.rows == 3


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path, served, capsys):
    from segflow.local.cli import main

    url, _ = served
    # The publisher's checksum does not match the small archive: the command fails and nothing is kept.
    assert main(["datasets", "fetch", "online-retail", "--url", url, "--dir", str(tmp_path / "d")]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    with pytest.raises(datasets.DatasetError, match="SHA-256 mismatch"):
        datasets.fetch("online-retail", tmp_path / "d", url=url)
    assert not (tmp_path / "d" / "online_retail.parquet").exists()
    assert [p.name for p in (tmp_path / "d").iterdir()] == []


def test_a_local_copy_of_the_workbook_is_checked_too(tmp_path):
    archive = small_archive(tmp_path)
    with zipfile.ZipFile(archive) as bundle:
        (tmp_path / "copy.xlsx").write_bytes(bundle.read("Online Retail.xlsx"))
    with pytest.raises(datasets.DatasetError, match="not the published UCI Online Retail workbook"):
        datasets.fetch("online-retail", tmp_path / "d", source=tmp_path / "copy.xlsx")
    result = datasets.fetch(
        "online-retail",
        tmp_path / "d",
        source=tmp_path / "copy.xlsx",
        sha256=hashlib.sha256((tmp_path / "copy.xlsx").read_bytes()).hexdigest(),
    )
    assert result.rows == 3 and not result.downloaded


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="cannot download http://127.0.0.1:9/x.zip"):
        datasets.fetch("online-retail", tmp_path / "d", url="http://127.0.0.1:9/x.zip")
