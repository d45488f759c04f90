"""Loading one batch (a file, an API day, a CRM window) into its raw table with row-level validation.

`batch_source` (left by a reader) -> mapping -> typed values -> good rows into raw.<dataset table>, every
refused row into raw.quarantine (file/partition, line or key, column, reason, raw record), and one
raw.load_audit row with rows_in = rows_loaded + rows_quarantined. Callers hold the transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime

from segflow.core.tables import ensure_output_tables
from segflow.extract.contracts import DATASETS, Dataset
from segflow.extract.errors import ExtractError
from segflow.extract.mapping import MappingPlan, quote_ident, quote_literal
from segflow.extract.readers import Batch, Reject

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "_source VARCHAR, _source_file VARCHAR, _file_date DATE, _row_ref VARCHAR, _run_id VARCHAR, _loaded_at TIMESTAMP"
)

# The fingerprint of the salt the warehouse's PII hashes were made with (segflow.extract.resolve_salt).
SALT_DDL = "CREATE TABLE IF NOT EXISTS raw.pii_salt (fingerprint VARCHAR, first_used_at TIMESTAMP)"

SYSTEM_DDL = f"""
CREATE SCHEMA IF NOT EXISTS raw;
{SALT_DDL};
CREATE TABLE IF NOT EXISTS raw.load_audit (
    run_id VARCHAR, as_of DATE, source VARCHAR, source_file VARCHAR, rows_in BIGINT, rows_loaded BIGINT,
    rows_quarantined BIGINT, loaded_at TIMESTAMP);
ALTER TABLE raw.load_audit ADD COLUMN IF NOT EXISTS dataset VARCHAR;
ALTER TABLE raw.load_audit ADD COLUMN IF NOT EXISTS notes VARCHAR;
CREATE TABLE IF NOT EXISTS raw.quarantine (
    run_id VARCHAR, source VARCHAR, source_file VARCHAR, row_ref VARCHAR, column_name VARCHAR, reason VARCHAR,
    raw_record VARCHAR, quarantined_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS raw.loaded_files (
    source VARCHAR, source_file VARCHAR, file_date DATE, size_bytes BIGINT, mtime_ns BIGINT, loaded_at TIMESTAMP);
ALTER TABLE raw.loaded_files ADD COLUMN IF NOT EXISTS content_sha256 VARCHAR;
CREATE TABLE IF NOT EXISTS raw.sources (
    source VARCHAR, dataset VARCHAR, kind VARCHAR, location VARCHAR, registered_at TIMESTAMP);
"""


@dataclass(frozen=True)
class LoadContext:
    run_id: str
    as_of: date
    now: datetime
    pii_salt: str = field(default="", repr=False)  # bound as a parameter, never written into SQL text


@dataclass
class BatchResult:
    partition: str
    rows_in: int
    rows_loaded: int
    rows_quarantined: int
    new_rows: int
    notes: list[str] = field(default_factory=list)


def ensure_tables(con) -> None:
    con.execute(SYSTEM_DDL)
    ensure_output_tables(con)  # the dbt models over Python-written tables find them from the first build on
    for dataset in DATASETS.values():
        cols = ", ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in dataset.columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS raw.{dataset.raw_table} ({cols}, {METADATA_COLUMNS})")
        # Warehouses created by earlier versions: add columns the contract gained since.
        for c in dataset.columns:
            con.execute(
                f"ALTER TABLE raw.{dataset.raw_table} ADD COLUMN IF NOT EXISTS {quote_ident(c.name)} {c.sql_type}"
            )
        con.execute(f"ALTER TABLE raw.{dataset.raw_table} ADD COLUMN IF NOT EXISTS _source VARCHAR")
        for hashed, _, _ in dataset.pii_hashes:
            con.execute(f"ALTER TABLE raw.{dataset.raw_table} ADD COLUMN IF NOT EXISTS {quote_ident(hashed)} VARCHAR")


def is_consent(column: str) -> bool:
    """Consent columns fail safe: a value that cannot be read is no consent (the row still loads, so an older
    opt-in of the same contact is not left in force by a quarantined update)."""
    return column.startswith("consent_")


def _checks(plan: MappingPlan, dataset: Dataset) -> list[tuple[str, str, str]]:
    """(condition on batch_checked, column label, reason SQL) per way a row can fail."""
    out = []
    for c in dataset.columns:
        raw_value = f"NULLIF(trim({quote_ident(c.name)}), '')"
        label = quote_literal(plan.describe(c.name))
        if c.required:
            out.append((f"{raw_value} IS NULL", label, "'missing required value'"))
        # A NUL character is no text any export or downstream tool can carry.
        out.append((f"coalesce(contains({quote_ident(c.name)}, chr(0)), false)", label, "'contains a NUL character'"))
        if c.sql_type != "VARCHAR" and not is_consent(c.name):
            typed = quote_ident("t:" + c.name)
            out.append(
                (
                    f"{raw_value} IS NOT NULL AND {typed} IS NULL",
                    label,
                    f"'cannot parse ''' || left({raw_value}, 100) || ''' as {c.sql_type.lower()}'",
                )
            )
        if c.sql_type in ("DOUBLE", "DATE", "TIMESTAMP"):
            # inf, NaN, 1e309 and 'infinity' parse, and would reach every sum and model downstream.
            typed = quote_ident("t:" + c.name)
            reason = "'not a finite number'" if c.sql_type == "DOUBLE" else "'not a finite date or time'"
            out.append((f"{typed} IS NOT NULL AND NOT isfinite({typed})", label, reason))
    return out


def _version_conflicts(con, table, source, dataset, plan, version_column, checks, notes) -> list[tuple[str, str, str]]:
    """Rows of a versioned source (the CRM) that claim the same (key, version) with different values.

    Within the batch one row is kept, deterministically (the one whose values sort first), and the others are
    quarantined; a row differing from the version already loaded is quarantined and the loaded one kept. Where
    the rivals disagree on a consent, the kept version's consent becomes no consent: conflicting consent is none.
    Adds the columns `_fp` (the row's values) and `_conflict` to batch_checked; returns the checks for them."""
    parsed = [c for c in dataset.columns if c.name != version_column]
    base_fail = " OR ".join(f"({cond})" for cond, _, _ in checks) or "false"

    def val(c, alias=""):
        return (
            (alias + quote_ident("t:" + c.name))
            if c.sql_type != "VARCHAR"
            else f"NULLIF(trim({alias}{quote_ident(c.name)}), '')"
        )

    fp = "md5(concat_ws('|', " + ", ".join(f"coalesce(CAST({val(c)} AS VARCHAR), '<null>')" for c in parsed) + "))"
    key = ", ".join([*(val(dataset.column(k)) for k in dataset.key), val(dataset.column(version_column))])
    consent = [c for c in dataset.columns if is_consent(c.name)]
    con.execute(f"""CREATE OR REPLACE TEMP TABLE batch_checked AS
        SELECT *, CASE WHEN NOT ({base_fail}) THEN {fp} END AS _fp FROM batch_checked""")
    same = " AND ".join(
        f"r.{quote_ident(k)} IS NOT DISTINCT FROM {val(dataset.column(k), 'b.')}"
        for k in (*dataset.key, version_column)
    )
    loaded_fp = (
        "md5(concat_ws('|', "
        + ", ".join(f"coalesce(CAST(r.{quote_ident(c.name)} AS VARCHAR), '<null>')" for c in parsed)
        + "))"
    )
    con.execute(f"""CREATE OR REPLACE TEMP TABLE batch_checked AS
        SELECT b.*,
               CASE
                   WHEN b._fp IS NULL THEN NULL
                   WHEN EXISTS (SELECT 1 FROM {table} AS r WHERE r._source = {quote_literal(source)} AND {same}
                                AND {loaded_fp} <> b._fp) THEN 'loaded'
                   WHEN b._fp <> min(b._fp) OVER (PARTITION BY {key.replace('"t:', 'b."t:')}) THEN 'batch'
               END AS _conflict
        FROM batch_checked AS b""")
    counts = dict(
        con.execute("SELECT _conflict, count(*) FROM batch_checked WHERE _conflict IS NOT NULL GROUP BY 1").fetchall()
    )
    if counts:
        notes.append(
            f"warning: {sum(counts.values())} row(s) give other values for a (key, {version_column}) "
            "already given; the first is kept, the others are quarantined"
        )
    if consent:
        # Rivals that disagree on a consent: the version kept says no consent.
        for c in consent:
            col = quote_ident("t:" + c.name)
            con.execute(f"""UPDATE batch_checked AS b SET {col} = false
                WHERE b._conflict IS NULL AND b._fp IS NOT NULL AND EXISTS (
                    SELECT 1 FROM batch_checked AS o WHERE o._conflict = 'batch'
                    AND {" AND ".join(f"o.{quote_ident('t:' + k) if dataset.column(k).sql_type != 'VARCHAR' else quote_ident(k)} IS NOT DISTINCT FROM b.{quote_ident('t:' + k) if dataset.column(k).sql_type != 'VARCHAR' else quote_ident(k)}" for k in (*dataset.key, version_column))}
                    AND o.{col} IS DISTINCT FROM b.{col})""")
            con.execute(f"""UPDATE {table} AS r SET {quote_ident(c.name)} = false
                WHERE r._source = {quote_literal(source)} AND EXISTS (
                    SELECT 1 FROM batch_checked AS b WHERE b._conflict = 'loaded' AND {same}
                    AND b.{col} IS DISTINCT FROM r.{quote_ident(c.name)})""")
    label = quote_literal(", ".join([*dataset.key, version_column]))
    return [
        (
            "_conflict IS NOT DISTINCT FROM 'batch'",
            label,
            f"'conflicting version: another row has the same {' and '.join([*dataset.key, version_column])} with other values'",
        ),
        (
            "_conflict IS NOT DISTINCT FROM 'loaded'",
            label,
            f"'conflicting version: differs from the version with the same {' and '.join([*dataset.key, version_column])} loaded earlier'",
        ),
    ]


@dataclass
class Part:
    """One partition of a batch: a file (or API day, CRM window) whose rows are those with `_part` = its index."""

    partition: str
    file_date: date | None
    rejects: list[Reject] = field(default_factory=list)  # rows its reader refused for their structure
    notes: list[str] = field(default_factory=list)


def load_batch(
    con,
    ctx: LoadContext,
    source: str,
    dataset: Dataset,
    plan: MappingPlan,
    batch: Batch,
    partition: str,
    file_date: date | None,
    mode: str = "replace",
    version_column: str | None = None,
) -> BatchResult:
    """Validate `batch_source` and load it.

    mode "replace": the partition's previous rows and quarantine entries are replaced (files, API days).
    mode "versions": rows whose (key, version_column) is already loaded are skipped (CRM snapshots/windows);
    quarantine entries of the same rows are replaced, so a row refused again is not listed twice.
    """
    part = Part(partition, file_date, list(batch.rejects), list(batch.notes))
    return load_parts(con, ctx, source, dataset, plan, batch.columns, [part], mode, version_column)[0]


def load_parts(
    con,
    ctx: LoadContext,
    source: str,
    dataset: Dataset,
    plan: MappingPlan,
    columns: list[str],
    parts: list[Part],
    mode: str = "replace",
    version_column: str | None = None,
    view: str = "batch_source",
    part_column: str | None = None,
) -> list[BatchResult]:
    """Validate the rows of `view` (source columns `columns`, all text, plus `_row_ref`) and load them.

    With one part the view is one batch; with several (files of one source sharing their columns, loaded at once:
    a statement and a commit per file cost more than its rows at demo size) the view's column `part_column` gives
    each row's index in `parts`. Everything is kept per part as if each had been loaded alone: its partition replaced, its
    quarantine entries and one raw.load_audit row each. Callers hold the transaction.

    Returns:
        One BatchResult per part, in order.
    """
    if len(parts) > 1 and (mode != "replace" or part_column is None):
        raise ValueError("several parts need mode 'replace' and a part column")
    table = f"raw.{dataset.raw_table}"
    source_cols = [c for c in columns]
    raw_obj = ", ".join(f"{quote_literal(c)}, {quote_ident(c)}" for c in source_cols)
    raw_expr = f"CAST(json_object({raw_obj}) AS VARCHAR)" if source_cols else "'{}'"
    canonical = plan.select_sql(view, raw_expr, part=quote_ident(part_column) if part_column else "0")
    row_ref = ""
    if mode == "versions":
        key = " || '/' || ".join(
            f"{quote_literal(k + '=')} || coalesce({quote_ident(k)}, '<null>')" for k in dataset.key
        )
        row_ref = f" REPLACE ({key} AS _row_ref)"
    typed = ", ".join(
        f"{plan.typed_expr(c)} AS {quote_ident('t:' + c.name)}" for c in dataset.columns if c.sql_type != "VARCHAR"
    )
    # One pass: canonical columns and their typed values (a separate canonical table cost a second copy per batch).
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE batch_checked AS SELECT *{row_ref}{', ' + typed if typed else ''} "
        f"FROM ({canonical}) AS canonical"
    )
    # Partition names and dates by part, for the statements that write them.
    con.execute(
        "CREATE OR REPLACE TEMP TABLE batch_parts AS SELECT CAST(i AS INTEGER) AS _part, CAST(p AS VARCHAR) AS "
        "_partition, CAST(d AS DATE) AS _part_date FROM (VALUES "
        + ", ".join("(?, ?, ?)" for _ in parts)
        + ") AS v(i, p, d)",
        [v for i, part in enumerate(parts) for v in (i, part.partition, part.file_date)],
    )
    checks = _checks(plan, dataset)
    notes = [list(part.notes) for part in parts]
    if mode == "versions" and version_column:
        checks += _version_conflicts(con, table, source, dataset, plan, version_column, checks, notes[0])
    failing = " OR ".join(f"({cond})" for cond, _, _ in checks) or "false"
    listed_cond = " OR ".join(f"coalesce({c}, false)" for c, _, _ in checks) or "false"
    unreadable = [c for c in dataset.columns if is_consent(c.name)]
    unreadable_cond = (
        " OR ".join(
            f"(NULLIF(trim({quote_ident(c.name)}), '') IS NOT NULL AND {quote_ident('t:' + c.name)} IS NULL)"
            for c in unreadable
        )
        or "false"
    )
    # Every count of the batch in one scan (a scan per count was a third of a file's load), per part.
    counts = {
        row[0]: row[1:]
        for row in con.execute(
            # count_if of no rows is NULL, not 0 (an empty CRM window, a file whose every line was refused).
            "SELECT _part, count(*), "
            + ", ".join(f"coalesce(count_if({c}), 0)" for c in ("f IS NOT FALSE", "l", "NOT f", "NOT f AND u"))
            + f" FROM (SELECT _part, ({failing}) AS f, {listed_cond} AS l, {unreadable_cond} AS u FROM batch_checked)"
            " GROUP BY _part"
        ).fetchall()
    }
    structurally_ok, refused, listed, passing, unreadable_rows = (
        [counts.get(i, (0, 0, 0, 0, 0))[k] for i in range(len(parts))] for k in range(5)
    )
    # Every row refused must be listed in the quarantine: a check whose SQL condition turned NULL would otherwise
    # drop rows silently (neither loaded nor quarantined).
    if sum(refused) != sum(listed):
        unlisted = [p.partition for p, r, li in zip(parts, refused, listed, strict=True) if r != li]
        raise ExtractError(
            f"{', '.join(unlisted)}: {sum(refused) - sum(listed)} row(s) neither loaded nor quarantined - a segflow "
            "bug; nothing of this batch was loaded"
        )

    if mode == "replace":
        in_parts = "IN (SELECT _partition FROM batch_parts)"
        con.execute(f"DELETE FROM {table} WHERE _source = ? AND _source_file {in_parts}", [source])
        con.execute(f"DELETE FROM raw.quarantine WHERE source = ? AND source_file {in_parts}", [source])
    else:
        con.execute(
            "DELETE FROM raw.quarantine WHERE source = ? AND row_ref IN (SELECT _row_ref FROM batch_checked)", [source]
        )

    def value(c, alias: str = "") -> str:
        if is_consent(c.name):
            raw = f"NULLIF(trim({alias}{quote_ident(c.name)}), '')"
            return f"coalesce({alias}{quote_ident('t:' + c.name)}, CASE WHEN {raw} IS NOT NULL THEN false END)"
        if c.sql_type != "VARCHAR":
            return alias + quote_ident("t:" + c.name)
        return f"NULLIF(trim({alias}{quote_ident(c.name)}), '')"

    values = ", ".join(value(c) for c in dataset.columns)
    names = ", ".join(quote_ident(c.name) for c in dataset.columns)
    salt_params: list[str] = []
    for hashed, column, condition in dataset.pii_hashes:
        normalised = f"lower(trim({quote_ident(column)}))"
        digest = f"sha256(?::VARCHAR || {normalised})"
        if condition:
            digest = f"CASE WHEN {condition.format(value=quote_ident(column))} THEN {digest} END"
        values += f", CASE WHEN NULLIF(trim({quote_ident(column)}), '') IS NOT NULL THEN {digest} END"
        names += f", {quote_ident(hashed)}"
        salt_params.append(ctx.pii_salt)
    good = f"SELECT * FROM batch_checked AS b WHERE NOT ({failing})"
    if mode == "versions" and version_column:
        same = " AND ".join(
            f"r.{quote_ident(k)} IS NOT DISTINCT FROM {value(dataset.column(k), 'b.')}"
            for k in (*dataset.key, version_column)
        )
        good += f" AND NOT EXISTS (SELECT 1 FROM {table} AS r WHERE r._source = {quote_literal(source)} AND {same})"
    new_rows = con.execute(
        f"INSERT INTO {table} ({names}, _source, _source_file, _file_date, _row_ref, _run_id, _loaded_at) "
        f"SELECT {values}, ?, _partition, _part_date, _row_ref, ?, ? FROM ({good}) JOIN batch_parts USING (_part)",
        [*salt_params, source, ctx.run_id, ctx.now],
    ).fetchall()[0][0]
    if mode == "replace" and new_rows != sum(passing):
        raise ExtractError(f"{parts[0].partition}: {new_rows} rows inserted of {sum(passing)} passing - a segflow bug")
    if sum(listed):
        # Each check reads only the refused rows.
        union = " UNION ALL ".join(
            f"SELECT _part, _row_ref, {label} AS column_name, {reason} AS reason, _raw FROM refused WHERE {cond}"
            for cond, label, reason in checks
        )
        con.execute(
            f"INSERT INTO raw.quarantine WITH refused AS MATERIALIZED (SELECT * FROM batch_checked WHERE {listed_cond}) "
            f"SELECT ?, ?, _partition, _row_ref, column_name, reason, _raw, ? FROM ({union}) JOIN batch_parts USING (_part)",
            [ctx.run_id, source, ctx.now],
        )
    structural = [
        [ctx.run_id, source, part.partition, r.row_ref, r.column, r.reason, r.raw, ctx.now]
        for part in parts
        for r in part.rejects
    ]
    if structural:
        con.executemany("INSERT INTO raw.quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)", structural)
    results = []
    for i, part in enumerate(parts):
        # Every row passing the checks is loaded; replacing a partition inserts them all, versions skip those
        # already loaded (new rows).
        loaded = passing[i]
        new = passing[i] if mode == "replace" else new_rows
        rows_in = structurally_ok[i] + len(part.rejects)
        if unreadable_rows[i]:
            notes[i].append(f"{unreadable_rows[i]} row(s) with an unreadable consent value, read as no consent")
        if plan.ignored:
            notes[i].append("ignored columns: " + ", ".join(plan.ignored))
        results.append(BatchResult(part.partition, rows_in, loaded, rows_in - loaded, new, notes[i]))
    con.executemany(
        "INSERT INTO raw.load_audit (run_id, as_of, source, source_file, rows_in, rows_loaded, rows_quarantined, "
        "loaded_at, dataset, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                ctx.run_id,
                ctx.as_of,
                source,
                r.partition,
                r.rows_in,
                r.rows_loaded,
                r.rows_quarantined,
                ctx.now,
                dataset.name,
                "; ".join(r.notes) or None,
            ]
            for r in results
        ],
    )
    for table_name in ("batch_checked", "batch_parts", view):
        con.execute(f"DROP TABLE IF EXISTS {table_name}")
    return results
