"""DuckDB access. One writer at a time: every connection is short-lived and closed (see DEVELOPERS notes)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import duckdb


@contextlib.contextmanager
def connect(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
    ).fetchone()[0])


def publish_table(con: duckdb.DuckDBPyConnection, schema: str, table: str, select_sql: str, params=None) -> int:
    """Build `schema.table` from a query and swap it in atomically: readers see the old or the new table,
    never a half-written one, and a failure leaves the old table untouched."""
    staging = f"{table}__staging"
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DROP TABLE IF EXISTS {schema}.{staging}")
        con.execute(f"CREATE TABLE {schema}.{staging} AS {select_sql}", params or [])
        con.execute(f"DROP TABLE IF EXISTS {schema}.{table}")
        con.execute(f"ALTER TABLE {schema}.{staging} RENAME TO {table}")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0]
