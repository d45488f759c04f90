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
from segflow.extract.mapping import normalise_name, quote_ident, quote_literal

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
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte-order mark says what the file is (Excel exports)
        codec = "utf-16"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        # The bytes themselves are not shown: structural messages reach logs and consoles, data values must not.
        raise ExtractError(
            f"{origin}: line {line}: the bytes at offset {exc.start} are not valid {encoding}; "
            "if the file uses another encoding set `encoding:` for this source (e.g. latin-1, cp1252)"
        ) from None
    except LookupError as exc:
        raise ExtractError(f"{origin}: unknown encoding {encoding!r}") from exc
    return text.lstrip("\ufeff")


def _register(con, table: pa.Table) -> None:
    con.register("batch_arrow", table)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE batch_source AS SELECT * FROM batch_arrow")
    finally:
        con.unregister("batch_arrow")


# Columns the readers and the loader add beside the source's: a source column of the same name would replace the
# row references of the quarantine (or the file's place in a group) with values from the file.
RESERVED_COLUMNS = ("_row_ref", "_part")


def _check_names(names: list[str], origin: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = normalise_name(name)
        if not key:
            raise ExtractError(f"{origin}: the header has an empty column name")
        if key in RESERVED_COLUMNS:
            raise ExtractError(
                f"{origin}: the column name {name[:60]!r} is reserved for segflow's row references; "
                "rename it in the export"
            )
        if key in seen:
            raise ExtractError(f"{origin}: duplicate column name {name[:60]!r} in the header")
        seen[key] = name


def sniff_delimiter(header_line: str) -> str:
    """The candidate that splits the header into the most fields, quotes respected (a quoted name may contain
    another candidate: `order_id,"customer;ref"` is comma-separated); ties go to the comma."""

    def fields(delim: str) -> int:
        try:
            return len(next(csv.reader([header_line], delimiter=delim)))
        except (csv.Error, StopIteration):
            return 0

    counts = {d: fields(d) for d in DELIMITER_CANDIDATES}
    best = max(DELIMITER_CANDIDATES, key=lambda d: (counts[d], d == ","))
    return best if counts[best] > 1 else ","


MAX_FIELD_CHARS = 262_144  # a longer field is no value of any contract: its row is quarantined
MAX_RECORD_LINES = 1_000  # a quoted field spanning more physical lines is taken for an unbalanced quote
csv.field_size_limit(64 * 1024 * 1024)  # read long fields to quarantine their row, not to refuse the file


@dataclass
class Record:
    first_line: int
    last_line: int
    fields: list[str] | None  # None: refused, see `reason`
    reason: str | None = None
    raw: str = ""

    @property
    def ref(self) -> str:
        return (
            f"line {self.first_line}"
            if self.first_line == self.last_line
            else f"lines {self.first_line}-{self.last_line}"
        )


def _physical_lines(text: str) -> list[str]:
    """Lines as written, ends kept: \n, \r\n or \r (not the other characters str.splitlines() breaks at)."""
    return io.StringIO(text, newline="").readlines()


def _parse_one(chunk: str, delim: str) -> list[str]:
    if '"' not in chunk:  # no quoting: what csv would return, without building a reader per line
        line = chunk.rstrip("\r\n")
        return line.split(delim) if line else []
    rows = list(csv.reader(io.StringIO(chunk, newline=""), delimiter=delim))
    return rows[0] if rows else []


def csv_records(text: str, delim: str, width: int | None = None):
    """Every physical line of a CSV text accounted for: records (quoted fields may span lines) or refusals.

    A quote that opens a field and never closes would swallow the rest of the file into one field. A record that
    spans lines is taken as it reads only when none of its continuation lines is a row on its own (has `width`
    fields, quotes balanced) and it closes within MAX_RECORD_LINES; otherwise its first line is refused for its
    unbalanced quote and reading resumes on the next line."""
    lines = _physical_lines(text)
    i = 0
    while i < len(lines):
        j, quotes = i, lines[i].count('"')
        while quotes % 2 and j + 1 < len(lines) and j - i < MAX_RECORD_LINES:
            j += 1
            quotes += lines[j].count('"')
        unbalanced = quotes % 2 == 1
        if not unbalanced and j > i and width is not None:
            unbalanced = any(
                lines[k].count('"') % 2 == 0 and len(_parse_one(lines[k], delim)) == width for k in range(i + 1, j + 1)
            )
        if unbalanced:
            yield Record(
                i + 1,
                i + 1,
                None,
                "unbalanced quote: a quoted field opened on this line does not close before the next row",
                lines[i].rstrip("\r\n")[:RAW_RECORD_LIMIT],
            )
            i += 1
            continue
        chunk = "".join(lines[i : j + 1])
        yield Record(i + 1, j + 1, _parse_one(chunk, delim), raw=chunk.rstrip("\r\n")[:RAW_RECORD_LIMIT])
        i = j + 1


def read_csv(con, path: Path, text: str, delimiter: str | None = None) -> Batch:
    origin = str(path)
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ExtractError(f"{origin}: empty file (no header) where data is expected")
    delim = delimiter or sniff_delimiter(first)
    header: list[str] | None = None
    normalised: list[str] = []
    rows: list[list[str]] = []
    refs: list[str] = []
    rejects: list[Reject] = []
    last_bad: tuple[int, int] | None = None
    records = csv_records(text, delim)
    for record in records:
        fields = record.fields
        if fields is not None and (not fields or (len(fields) == 1 and not fields[0].strip())):
            continue  # blank line: not a row
        if header is None:
            if fields is None:
                raise ExtractError(f"{origin}: line {record.first_line}: the header has an unbalanced quote")
            header = [f.strip() for f in fields]
            _check_names(header, origin)
            normalised = [normalise_name(h) for h in header]
            records = csv_records("".join(_physical_lines(text)[record.last_line :]), delim, len(header))
            offset = record.last_line
            break
    if header is None:
        raise ExtractError(f"{origin}: empty file (no header) where data is expected")
    for record in records:
        first_line, last_line = record.first_line + offset, record.last_line + offset
        ref = f"line {first_line}" if first_line == last_line else f"lines {first_line}-{last_line}"
        fields = record.fields
        if fields is None:
            rejects.append(Reject(ref, None, record.reason or "unreadable", record.raw))
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line: not a row
        last_bad = None
        if len(fields) == len(header) and [normalise_name(f) for f in fields] == normalised:
            rejects.append(Reject(ref, None, "repeated header row", record.raw))
        elif len(fields) != len(header):
            last_bad = (first_line, len(fields))
            rejects.append(Reject(ref, None, f"expected {len(header)} fields, found {len(fields)}", record.raw))
        elif (longest := max(range(len(fields)), key=lambda k: len(fields[k]))) is not None and len(
            fields[longest]
        ) > MAX_FIELD_CHARS:
            rejects.append(
                Reject(
                    ref,
                    header[longest],
                    f"field of {len(fields[longest]):,} characters exceeds the {MAX_FIELD_CHARS:,}-character limit",
                    record.raw,
                )
            )
        else:
            rows.append(fields)
            refs.append(ref)
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
    # A field over the limit is quarantined as in CSV files (only lines that long can hold one).
    for n, line in con.execute(
        f"SELECT line_no, line FROM batch_json WHERE is_object AND length(line) > {MAX_FIELD_CHARS} ORDER BY line_no"
    ).fetchall():
        items = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in json.loads(line).items()]
        name, value = max(items, key=lambda kv: len(kv[1]), default=(None, ""))
        if len(value) > MAX_FIELD_CHARS:
            reason = f"field of {len(value):,} characters exceeds the {MAX_FIELD_CHARS:,}-character limit"
            rejects.append(Reject(f"line {n}", name, reason, line[:RAW_RECORD_LIMIT]))
            con.execute("DELETE FROM batch_json WHERE line_no = ?", [n])
    keys = [
        r[0]
        for r in con.execute(
            "SELECT k FROM (SELECT unnest(json_keys(line)) AS k, line_no FROM batch_json WHERE is_object) "
            "GROUP BY k ORDER BY min(line_no), k"
        ).fetchall()
    ]
    # Keys that differ only in case ("Device" beside "device") are one column: each row takes the value it has,
    # and a row holding two different values under them is quarantined.
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(normalise_name(key), []).append(key)
    columns = [variants[0] for variants in groups.values()]
    _check_names(columns, origin)
    merged = {variants[0]: variants for variants in groups.values() if len(variants) > 1}
    if merged:
        for name, variants in merged.items():
            values = [f"json_extract_string(line, {quote_literal('$.' + json.dumps(v))})" for v in variants]
            conflict = " OR ".join(
                f"({a} IS NOT NULL AND {b} IS NOT NULL AND {a} <> {b})"
                for n, a in enumerate(values)
                for b in values[n + 1 :]
            )
            shown = " and ".join(repr(v)[:60] for v in variants)
            for line_no, line in con.execute(
                f"SELECT line_no, line FROM batch_json WHERE is_object AND ({conflict}) ORDER BY line_no"
            ).fetchall():
                rejects.append(
                    Reject(
                        f"line {line_no}", name, f"conflicting values under the keys {shown}", line[:RAW_RECORD_LIMIT]
                    )
                )
            con.execute(f"DELETE FROM batch_json WHERE is_object AND ({conflict})")
    if columns:
        plain = {k for k in keys if normalise_name(k) not in {normalise_name(m) for m in merged}}
        spec = json.dumps({k: "VARCHAR" for k in sorted(plain)}).replace("'", "''")
        exprs = []
        for name in columns:
            if name in merged:
                values = [f"json_extract_string(line, {quote_literal('$.' + json.dumps(v))})" for v in merged[name]]
                exprs.append(f"coalesce({', '.join(values)}) AS {quote_ident(name)}")
            else:
                exprs.append(f"s.{quote_ident(name)} AS {quote_ident(name)}")
        source = f"json_transform(line, '{spec}')" if plain else "NULL"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE batch_source AS
                        SELECT 'line ' || line_no AS _row_ref, {", ".join(exprs)}
                        FROM (SELECT line_no, line, {source} AS s FROM batch_json WHERE is_object)
                        ORDER BY line_no""")
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE batch_source AS SELECT 'line ' || line_no AS _row_ref FROM batch_json WHERE is_object"
        )
    keys = columns
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
