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
from segflow.extract.mapping import MappingPlan, quote_ident, quote_literal
from segflow.extract.readers import Batch

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "_source VARCHAR, _source_file VARCHAR, _file_date DATE, _row_ref VARCHAR, _run_id VARCHAR, _loaded_at TIMESTAMP"
)

SYSTEM_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
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
CREATE TABLE IF NOT EXISTS raw.sources (
    source VARCHAR, dataset VARCHAR, kind VARCHAR, location VARCHAR, registered_at TIMESTAMP);
"""


@dataclass(frozen=True)
class LoadContext:
    run_id: str
    as_of: date
    now: datetime


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


def _checks(plan: MappingPlan, dataset: Dataset) -> list[tuple[str, str, str]]:
    """(condition on batch_checked, column label, reason SQL) per way a row can fail."""
    out = []
    for c in dataset.columns:
        raw_value = f"NULLIF(trim({quote_ident(c.name)}), '')"
        label = quote_literal(plan.describe(c.name))
        if c.required:
            out.append((f"{raw_value} IS NULL", label, "'missing required value'"))
        if c.sql_type != "VARCHAR":
            typed = quote_ident("t:" + c.name)
            out.append(
                (
                    f"{raw_value} IS NOT NULL AND {typed} IS NULL",
                    label,
                    f"'cannot parse ''' || left({raw_value}, 100) || ''' as {c.sql_type.lower()}'",
                )
            )
    return out


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
    table = f"raw.{dataset.raw_table}"
    source_cols = [c for c in batch.columns]
    raw_obj = ", ".join(f"{quote_literal(c)}, {quote_ident(c)}" for c in source_cols)
    raw_expr = f"CAST(json_object({raw_obj}) AS VARCHAR)" if source_cols else "'{}'"
    canonical = plan.select_sql("batch_source", raw_expr)
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
    checks = _checks(plan, dataset)
    failing = " OR ".join(f"({cond})" for cond, _, _ in checks) or "false"

    params = [ctx.run_id, source, partition]
    if mode == "replace":
        con.execute(f"DELETE FROM {table} WHERE _source = ? AND _source_file = ?", [source, partition])
        con.execute("DELETE FROM raw.quarantine WHERE source = ? AND source_file = ?", [source, partition])
    else:
        con.execute(
            "DELETE FROM raw.quarantine WHERE source = ? AND row_ref IN (SELECT _row_ref FROM batch_checked)", [source]
        )

    def value(c, alias: str = "") -> str:
        if c.sql_type != "VARCHAR":
            return alias + quote_ident("t:" + c.name)
        return f"NULLIF(trim({alias}{quote_ident(c.name)}), '')"

    values = ", ".join(value(c) for c in dataset.columns)
    names = ", ".join(quote_ident(c.name) for c in dataset.columns)
    good = f"SELECT * FROM batch_checked AS b WHERE NOT ({failing})"
    if mode == "versions" and version_column:
        same = " AND ".join(
            f"r.{quote_ident(k)} IS NOT DISTINCT FROM {value(dataset.column(k), 'b.')}"
            for k in (*dataset.key, version_column)
        )
        good += f" AND NOT EXISTS (SELECT 1 FROM {table} AS r WHERE r._source = {quote_literal(source)} AND {same})"
    new_rows = con.execute(
        f"INSERT INTO {table} ({names}, _source, _source_file, _file_date, _row_ref, _run_id, _loaded_at) "
        f"SELECT {values}, ?, ?, ?, _row_ref, ?, ? FROM ({good})",
        [source, partition, file_date, ctx.run_id, ctx.now],
    ).fetchall()[0][0]
    if checks:
        union = " UNION ALL ".join(
            f"SELECT _row_ref, {label} AS column_name, {reason} AS reason, _raw FROM batch_checked WHERE {cond}"
            for cond, label, reason in checks
        )
        con.execute(
            f"INSERT INTO raw.quarantine SELECT ?, ?, ?, _row_ref, column_name, reason, _raw, ? FROM ({union})",
            [*params, ctx.now],
        )
    if batch.rejects:
        con.executemany(
            "INSERT INTO raw.quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [[*params, r.row_ref, r.column, r.reason, r.raw, ctx.now] for r in batch.rejects],
        )
    structurally_ok = con.execute("SELECT count(*) FROM batch_checked").fetchall()[0][0]
    # Replacing a partition inserts every good row; versions skip those already loaded, so count them.
    loaded = (
        new_rows
        if mode == "replace"
        else con.execute(f"SELECT count(*) FROM batch_checked WHERE NOT ({failing})").fetchall()[0][0]
    )
    rows_in = structurally_ok + len(batch.rejects)
    notes = list(batch.notes)
    if plan.ignored:
        notes.append("ignored columns: " + ", ".join(plan.ignored))
    con.execute(
        "INSERT INTO raw.load_audit (run_id, as_of, source, source_file, rows_in, rows_loaded, rows_quarantined, "
        "loaded_at, dataset, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ctx.run_id,
            ctx.as_of,
            source,
            partition,
            rows_in,
            loaded,
            rows_in - loaded,
            ctx.now,
            dataset.name,
            "; ".join(notes) or None,
        ],
    )
    for table_name in ("batch_checked", "batch_source"):
        con.execute(f"DROP TABLE IF EXISTS {table_name}")
    return BatchResult(partition, rows_in, loaded, rows_in - loaded, new_rows, notes)
