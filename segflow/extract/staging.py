"""The extract into a warehouse other than DuckDB: validate in a private DuckDB staging database, publish at once.

The readers, the mapping and the row checks are DuckDB SQL (its CSV and JSON readers, typed casts, the quarantine
reasons); a second implementation per engine would drift from the first. So a PostgreSQL warehouse gets the very
same extract, run against a DuckDB staging file seeded with the warehouse state the extract reads - the loaded-files
ledger, the salt fingerprint, the rows and quarantine of versioned sources (the CRM: conflicts and versions already
loaded are judged against them) - and then every partition the run touched is copied to the warehouse through its
bulk path (COPY on PostgreSQL) in one transaction. The warehouse's raw layer switches from the last good state to
the new one at once: a failed or killed extract leaves it as it was.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segflow.core.engines import DuckDBEngine, Engine
from segflow.core.warehouse import connect
from segflow.extract.loader import ensure_tables
from segflow.extract.spec import SourceSpec

log = logging.getLogger(__name__)

PUBLISH_CHUNK_ROWS = 200_000  # rows per COPY: bounds the memory a first load of many files needs

# Warehouse tables the staging database starts from (source-specific rows are added by `_seed`).
LEDGER_TABLES = ("raw.loaded_files", "raw.pii_salt")


def versioned(spec: SourceSpec) -> bool:
    """Sources loaded by version (a CRM table): new rows are judged against those already loaded."""
    return spec.kind == "sql"


@contextlib.contextmanager
def staging_database(warehouse: Engine, specs: list[SourceSpec]) -> Iterator:
    """A DuckDB connection on a fresh staging file holding the warehouse state the extract of `specs` reads.

    Args:
        warehouse: the target warehouse's engine (writable).
        specs: every configured source.

    Returns:
        The staging connection (a context manager's value); the file is removed when the block ends.
    """
    with (
        tempfile.TemporaryDirectory(prefix="segflow-staging-") as folder,
        connect(Path(folder) / "staging.duckdb") as con,
    ):
        ensure_tables(con)
        _seed(con, warehouse, specs)
        # The ledger as it was: partitions whose entry changed or vanished are the ones to publish.
        con.execute("CREATE TABLE staging_ledger_before AS SELECT * FROM raw.loaded_files")
        yield con


def _copy_down(con, warehouse: Engine, table: str, where: str = "", params: tuple = ()) -> None:
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    select = ", ".join(f'"{c}"' for c in columns)
    frame = warehouse.frame(f"SELECT {select} FROM {table} {where}", params)
    if len(frame):
        DuckDBEngine(con).append(table, frame)


def _seed(con, warehouse: Engine, specs: list[SourceSpec]) -> None:
    for table in LEDGER_TABLES:
        _copy_down(con, warehouse, table)
    for spec in specs:
        if versioned(spec):
            _copy_down(con, warehouse, f"raw.{spec.dataset.raw_table}", "WHERE _source = ?", (spec.name,))
            _copy_down(con, warehouse, "raw.quarantine", "WHERE source = ?", (spec.name,))


def _as_text(con, sql: str, params: list | None = None) -> Iterator:
    """The rows of `sql` in chunks, every column as text in DuckDB's rendering (which PostgreSQL's input reads)."""
    described = con.execute(f"DESCRIBE {sql}", params or []).fetchall()
    text = ", ".join(f'CAST("{r[0]}" AS VARCHAR) AS "{r[0]}"' for r in described)
    reader = con.sql(f"SELECT {text} FROM ({sql})", params=params or None).to_arrow_reader(PUBLISH_CHUNK_ROWS)
    for batch in reader:
        yield batch.to_pandas()


def publish(con, warehouse: Engine, specs: list[SourceSpec]) -> dict[str, int]:
    """Copy what the staged extract changed into the warehouse, in one transaction.

    Partition-replaced sources (files, API days): each partition whose ledger entry is new, changed or gone is
    deleted from the warehouse's raw table, quarantine and ledger and its staged rows inserted. Versioned sources:
    their rows and quarantine are replaced as a whole (a run may turn an older row's consent off). The run's audit
    rows are appended and `raw.sources` and the salt fingerprint replaced.

    Returns:
        Rows written per warehouse table.
    """
    written: dict[str, int] = {}

    def append(table: str, sql: str, params: list | None = None) -> None:
        for chunk in _as_text(con, sql, params):
            warehouse.append(table, chunk)
            written[table] = written.get(table, 0) + len(chunk)

    touched = con.execute(
        """SELECT source, source_file FROM (SELECT * FROM staging_ledger_before EXCEPT SELECT * FROM raw.loaded_files)
           UNION SELECT source, source_file FROM (SELECT * FROM raw.loaded_files EXCEPT SELECT * FROM staging_ledger_before)"""
    ).df()
    by_version = [s.name for s in specs if versioned(s)]
    with warehouse.transaction(publish_partitions=touched):
        partition = "(source, source_file) IN (SELECT source, source_file FROM publish_partitions)"
        for table in sorted({s.dataset.raw_table for s in specs}):
            warehouse.execute(
                f"DELETE FROM raw.{table} WHERE (_source, _source_file) IN "
                "(SELECT source, source_file FROM publish_partitions)"
            )
            for name in by_version:
                warehouse.execute(f"DELETE FROM raw.{table} WHERE _source = ?", [name])
            append(f"raw.{table}", f"SELECT * FROM raw.{table}")
        warehouse.execute(f"DELETE FROM raw.quarantine WHERE {partition}")
        warehouse.execute(f"DELETE FROM raw.loaded_files WHERE {partition}")
        for name in by_version:
            warehouse.execute("DELETE FROM raw.quarantine WHERE source = ?", [name])
        append("raw.quarantine", "SELECT * FROM raw.quarantine")
        append("raw.loaded_files", "SELECT * FROM raw.loaded_files EXCEPT SELECT * FROM staging_ledger_before")
        append("raw.load_audit", "SELECT * FROM raw.load_audit")
        for table in ("raw.sources", "raw.pii_salt"):
            warehouse.execute(f"DELETE FROM {table}")
            append(table, f"SELECT * FROM {table}")
    log.info("extract published to the warehouse: %s", written)
    return written
