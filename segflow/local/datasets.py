"""Public example datasets: download from the publisher, verify the checksum, convert to Parquet, credit the licence.

`segflow datasets fetch online-retail` puts the UCI Online Retail dataset where
examples/online_retail/segflow.yml looks for it (<root>/data/online_retail/online_retail.parquet). The download
is checked against the publisher's archive's SHA-256 before anything is read from it; only the one workbook
member is read from the archive (nothing is extracted to disk), and the Parquet file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from segflow.core.config import Settings


class DatasetError(RuntimeError):
    """A dataset could not be fetched, verified or converted."""


@dataclass(frozen=True)
class PublicDataset:
    name: str
    title: str
    page: str
    url: str
    sha256: str  # of the archive at `url`
    member: str  # the workbook inside the archive
    member_sha256: str
    folder: str  # under <root>/data
    filename: str
    licence: str
    citation: str


ONLINE_RETAIL = PublicDataset(
    name="online-retail",
    title="UCI Online Retail",
    page="https://archive.ics.uci.edu/dataset/352/online+retail",
    url="https://archive.ics.uci.edu/static/public/352/online+retail.zip",
    sha256="f5385cbb54bbebf7196389109c6b0621faab0c304e3702548165e71c84aede8b",
    member="Online Retail.xlsx",
    member_sha256="43465a06f2ccf7c8b5bd2892bc7defb52f97487934fe93b16ae4c3936424676d",
    folder="online_retail",
    filename="online_retail.parquet",
    licence="CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
    citation="Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository. "
    "https://doi.org/10.24432/C5BW33",
)
DATASETS = {ONLINE_RETAIL.name: ONLINE_RETAIL}


@dataclass(frozen=True)
class FetchResult:
    path: Path
    rows: int
    sha256: str
    downloaded: bool


def default_folder(settings: Settings, name: str) -> Path:
    return settings.root / "data" / DATASETS[name].folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str, target: Path, progress: Callable[[str], None] = lambda _line: None, timeout: float = 60.0
) -> str:
    """Stream `url` into `target` (via a temporary file beside it); returns the SHA-256 of what arrived."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "segflow-datasets"})
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                if total and (tenth := done * 10 // total) != shown:
                    shown = tenth
                    progress(f"  downloaded {done / 1e6:.1f} of {total / 1e6:.1f} MB")
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from exc
    partial.replace(target)
    return digest.hexdigest()


def read_online_retail(workbook: io.BufferedIOBase | Path):
    """The workbook as the columns the example mapping expects: codes as text, InvoiceDate as
    'YYYY-MM-DD HH:MM:SS' text, Quantity integer, UnitPrice and CustomerID floats."""
    import pandas as pd

    frame = pd.read_excel(
        workbook, engine="openpyxl", dtype={"InvoiceNo": str, "StockCode": str, "Description": str, "Country": str}
    )
    expected = [
        "InvoiceNo",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "UnitPrice",
        "CustomerID",
        "Country",
    ]
    if list(frame.columns) != expected:
        raise DatasetError(f"unexpected columns in the workbook: {list(frame.columns)} (expected {expected})")
    frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    frame["Quantity"] = frame["Quantity"].astype("int64")
    frame["UnitPrice"] = frame["UnitPrice"].astype("float64")
    frame["CustomerID"] = frame["CustomerID"].astype("float64")
    for column in ("InvoiceNo", "StockCode", "Description", "Country"):
        frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
    return frame


def _provenance(spec: PublicDataset, source: str, archive_sha: str, rows: int) -> str:
    return (
        f"# {spec.title}\n\n"
        f"`{spec.filename}` was converted by `segflow datasets fetch {spec.name}` on "
        f"{datetime.now(UTC):%Y-%m-%d} from\n{source}\n(SHA-256 {archive_sha}), member "
        f"`{spec.member}`: {rows:,} rows.\n\n"
        f"- Dataset page: {spec.page}\n- Licence: {spec.licence}\n- Cite as: {spec.citation}\n\n"
        "Converted without changing a value: codes kept as text, InvoiceDate written as 'YYYY-MM-DD HH:MM:SS'.\n"
    )


def fetch(
    name: str,
    folder: Path,
    source: str | os.PathLike | None = None,
    url: str | None = None,
    force: bool = False,
    sha256: str | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> FetchResult:
    """Fetch dataset `name` into `folder`: download (or take `source`, a local copy of the archive or of the
    workbook), verify its SHA-256 (`sha256` overrides the publisher's, for mirrors of other content and tests),
    convert to Parquet atomically and write PROVENANCE.md with the licence and citation.

    Returns the converted file; an existing one is kept unless `force`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = DATASETS[name]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.filename
    if target.exists() and not force:
        rows = pq.ParquetFile(target).metadata.num_rows
        progress(f"{target} exists ({rows:,} rows); --force fetches again")
        return FetchResult(target, rows, _sha256(target), downloaded=False)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as scratch:
        if source is not None:
            local = Path(source)
            if not local.is_file():
                raise DatasetError(f"{local} is not a file")
            archive = Path(scratch) / local.name
            shutil.copyfile(local, archive)
            origin, got = str(local), _sha256(archive)
        else:
            origin = url or spec.url
            progress(f"downloading {origin}")
            archive = Path(scratch) / "download"
            got = download(origin, archive, progress)
        is_workbook = not zipfile.is_zipfile(archive) or _is_xlsx(archive)
        wanted = sha256 or (spec.member_sha256 if is_workbook else spec.sha256)
        if got != wanted:
            raise DatasetError(
                f"SHA-256 mismatch for {origin}: expected {wanted}, got {got} - the file is corrupt or "
                f"not the published {spec.title} {'workbook' if is_workbook else 'archive'}; nothing was kept"
            )
        progress(f"verified SHA-256 {got}; converting {spec.member} to Parquet (about a minute)")
        if is_workbook:
            frame = read_online_retail(archive)
        else:
            with zipfile.ZipFile(archive) as bundle:
                if spec.member not in bundle.namelist():
                    raise DatasetError(f"{origin} holds no {spec.member!r} (members: {bundle.namelist()[:5]})")
                with bundle.open(spec.member) as member:
                    frame = read_online_retail(io.BytesIO(member.read()))
        partial = Path(scratch) / spec.filename
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), partial)
        os.replace(partial, target)
    (folder / "PROVENANCE.md").write_text(_provenance(spec, origin, got, len(frame)))
    return FetchResult(target, len(frame), _sha256(target), downloaded=source is None)


def _is_xlsx(path: Path) -> bool:
    """An .xlsx workbook is itself a zip archive: tell it from the publisher's archive by its content."""
    with zipfile.ZipFile(path) as bundle:
        return "[Content_Types].xml" in bundle.namelist()
