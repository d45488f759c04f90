"""File readers: CSV, JSON lines and Parquet (optionally gzip-compressed) into the temp table `batch_source`.

Every reader produces one VARCHAR column per source column plus `_row_ref` ("line N" / "row N") and a list of
rows rejected for their structure (wrong field count, repeated header, invalid JSON), each with a reason.
Problems with the file as a whole raise ExtractError naming the file: empty, truncated (gzip stream or last
line), undecodable bytes in the declared encoding, duplicate column names, unreadable Parquet.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from segflow.extract.errors import ExtractError
from segflow.extract.mapping import normalise_name, quote_ident

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
RAW_RECORD_LIMIT = 2000  # characters of a refused row kept in the quarantine


@dataclass
class Reject:
    row_ref: str
    column: str | None
    reason: str
    raw: str


@dataclass
class Batch:
    """What a reader left in temp table `batch_source`."""

    origin: str
    columns: list[str]
    rows: int
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def file_format(path: Path, declared: str | None = None) -> str:
    if declared:
        if declared not in ("csv", "jsonl", "parquet"):
            raise ValueError(f"unknown file format {declared!r} (csv, jsonl, parquet)")
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    raise ExtractError(f"{path}: cannot tell the file format from its name; set `format:` (csv, jsonl, parquet)")


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when compressed; refuses empty and truncated files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractError(f"{path}: unreadable: {exc}") from exc
    if not data:
        raise ExtractError(f"{path}: empty file (0 bytes) where data is expected")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise ExtractError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
    return data


def decode(data: bytes, encoding: str, origin: str) -> str:
    codec = "utf-8-sig" if encoding.replace("-", "").replace("_", "").lower() == "utf8" else encoding
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ExtractError(
            f"{origin}: line {line}: bytes {data[exc.start : exc.end]!r} at offset {exc.start} are not valid {encoding}; "
            "if the file uses another encoding set `encoding:` for this source (e.g. latin-1, cp1252)"
        ) from exc
    except LookupError as exc:
        raise ExtractError(f"{origin}: unknown encoding {encoding!r}") from exc
    return text.lstrip("\ufeff")


def _register(con, table: pa.Table) -> None:
    con.register("batch_arrow", table)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE batch_source AS SELECT * FROM batch_arrow")
    finally:
        con.unregister("batch_arrow")


def _check_names(names: list[str], origin: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = normalise_name(name)
        if not key:
            raise ExtractError(f"{origin}: the header has an empty column name")
        if key in seen:
            raise ExtractError(f"{origin}: duplicate column name {name!r} in the header")
        seen[key] = name


def sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITER_CANDIDATES}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_csv(con, path: Path, text: str, delimiter: str | None = None) -> Batch:
    origin = str(path)
    lines_view = io.StringIO(text, newline="")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ExtractError(f"{origin}: empty file (no header) where data is expected")
    delim = delimiter or sniff_delimiter(first)
    reader = csv.reader(lines_view, delimiter=delim)
    header: list[str] | None = None
    rows: list[list[str]] = []
    refs: list[str] = []
    rejects: list[Reject] = []
    last_bad: tuple[int, int] | None = None
    line_end = 0
    try:
        for fields in reader:
            start, line_end = line_end + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line: not a row
            if header is None:
                header = [f.strip() for f in fields]
                _check_names(header, origin)
                normalised = [normalise_name(h) for h in header]
                continue
            last_bad = None
            if len(fields) == len(header) and [normalise_name(f) for f in fields] == normalised:
                rejects.append(
                    Reject(f"line {start}", None, "repeated header row", delim.join(fields)[:RAW_RECORD_LIMIT])
                )
            elif len(fields) != len(header):
                last_bad = (start, len(fields))
                rejects.append(
                    Reject(
                        f"line {start}",
                        None,
                        f"expected {len(header)} fields, found {len(fields)}",
                        delim.join(fields)[:RAW_RECORD_LIMIT],
                    )
                )
            else:
                rows.append(fields)
                refs.append(f"line {start}")
    except csv.Error as exc:
        raise ExtractError(f"{origin}: line {reader.line_num}: malformed CSV ({exc})") from exc
    assert header is not None
    if last_bad and last_bad[1] < len(header) and not text.endswith(("\n", "\r")):
        raise ExtractError(
            f"{origin}: truncated file: the last line ({last_bad[0]}) has {last_bad[1]} of "
            f"{len(header)} fields and no line end"
        )
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    table = pa.table(
        {
            "_row_ref": pa.array(refs, pa.string()),
            **{name: pa.array(list(values), pa.string()) for name, values in zip(header, columns, strict=True)},
        }
    )
    _register(con, table)
    notes = [f"delimiter {delim!r}"] if delim != "," else []
    return Batch(origin, header, len(rows), rejects, notes)


def read_jsonl(con, path: Path, text: str) -> Batch:
    origin = str(path)
    lines = text.split("\n")
    con.register(
        "batch_lines",
        pa.table({"line_no": pa.array(range(1, len(lines) + 1), pa.int64()), "line": pa.array(lines, pa.string())}),
    )
    try:
        # One JSON parse per line tells valid and object apart (try() turns a parse error into NULL).
        con.execute("""CREATE OR REPLACE TEMP TABLE batch_json AS
                       SELECT line_no, line, coalesce(json_kind = 'OBJECT', false) AS is_object, json_kind IS NOT NULL AS is_json
                       FROM (SELECT line_no, line, try(json_type(line)) AS json_kind FROM batch_lines WHERE trim(line) <> '')""")
    finally:
        con.unregister("batch_lines")
    bad = con.execute("SELECT line_no, line, is_json FROM batch_json WHERE NOT is_object ORDER BY line_no").fetchall()
    if not con.execute("SELECT count(*) FROM batch_json").fetchall()[0][0]:
        raise ExtractError(f"{origin}: empty file (no records) where data is expected")
    last_line = con.execute("SELECT max(line_no) FROM batch_json").fetchall()[0][0]
    if bad and bad[-1][0] == last_line and not bad[-1][2] and not text.endswith("\n"):
        raise ExtractError(
            f"{origin}: truncated file: the last line ({last_line}) is incomplete JSON and has no line end"
        )
    rejects = [
        Reject(f"line {n}", None, "invalid JSON" if not is_json else "not a JSON object", line[:RAW_RECORD_LIMIT])
        for n, line, is_json in bad
    ]
    keys = [
        r[0]
        for r in con.execute(
            "SELECT k FROM (SELECT unnest(json_keys(line)) AS k, line_no FROM batch_json WHERE is_object) "
            "GROUP BY k ORDER BY min(line_no), k"
        ).fetchall()
    ]
    _check_names(keys, origin)
    if keys:
        spec = json.dumps({k: "VARCHAR" for k in keys}).replace("'", "''")
        cols = ", ".join(f"s.{quote_ident(k)} AS {quote_ident(k)}" for k in keys)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE batch_source AS
                        SELECT 'line ' || line_no AS _row_ref, {cols}
                        FROM (SELECT line_no, json_transform(line, '{spec}') AS s FROM batch_json WHERE is_object)
                        ORDER BY line_no""")
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE batch_source AS SELECT 'line ' || line_no AS _row_ref FROM batch_json WHERE is_object"
        )
    rows = con.execute("SELECT count(*) FROM batch_source").fetchall()[0][0]
    con.execute("DROP TABLE batch_json")
    return Batch(origin, keys, rows, rejects)


def _as_strings(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], pa.string())


def read_parquet(con, path: Path, data: bytes) -> Batch:
    import pyarrow.parquet as pq

    origin = str(path)
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise ExtractError(f"{origin}: unreadable Parquet ({exc})") from exc
    _check_names(table.column_names, origin)
    strings = pa.table(
        {
            "_row_ref": pa.array([f"row {i}" for i in range(1, table.num_rows + 1)], pa.string()),
            **{name: _as_strings(table.column(name)) for name in table.column_names},
        }
    )
    _register(con, strings)
    return Batch(origin, table.column_names, table.num_rows)


def read_file(con, path: Path, fmt: str | None = None, encoding: str = "utf-8", delimiter: str | None = None) -> Batch:
    kind = file_format(path, fmt)
    data = read_bytes(path)
    if kind == "parquet":
        return read_parquet(con, path, data)
    text = decode(data, encoding, str(path))
    if not text.strip():
        raise ExtractError(f"{path}: empty file (only whitespace) where data is expected")
    return read_csv(con, path, text, delimiter) if kind == "csv" else read_jsonl(con, path, text)


def flatten(record: dict, prefix: str = "") -> dict:
    """Nested objects become dotted columns ({"context": {"device": "x"}} -> "context.device"); lists stay JSON."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_records(con, records: list[dict], origin: str, empty_columns: tuple[str, ...] | list[str] = ()) -> Batch:
    """Records from an API (dicts), nested objects flattened to dotted column names."""
    records = [flatten(r) for r in records]
    keys: list[str] = [] if records else list(empty_columns)
    seen = set()
    for record in records:
        for key in record:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    _check_names(keys, origin)

    def text(value):
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    table = pa.table(
        {
            "_row_ref": pa.array([f"record {i + 1}" for i in range(len(records))], pa.string()),
            **{k: pa.array([text(r.get(k)) for r in records], pa.string()) for k in keys},
        }
    )
    _register(con, table)
    return Batch(origin, keys, len(records))
