"""One small query interface over each warehouse engine's native connection.

SQL is written once, in DuckDB's dialect with `?` placeholders, and transpiled by sqlglot for other engines
(docs/production.md says why this and not ibis or SQLAlchemy). An engine answers queries and tells the types of a
query's columns in DuckDB's type names, so checks written against those names hold on every engine.

Engines here: DuckDB (`duckdb:///path`, the default warehouse) and PostgreSQL (`postgresql://...`, psycopg2).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

# PostgreSQL type OIDs (pg_type) as DuckDB names the same types.
POSTGRES_TYPES = {
    16: "BOOLEAN",
    20: "BIGINT",
    21: "SMALLINT",
    23: "INTEGER",
    25: "VARCHAR",
    700: "FLOAT",
    701: "DOUBLE",
    1043: "VARCHAR",
    1082: "DATE",
    1114: "TIMESTAMP",
    1184: "TIMESTAMP WITH TIME ZONE",
    1700: "DECIMAL",
}


class Engine(Protocol):
    """What a Python task needs from a warehouse to query it."""

    dialect: str

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]: ...


def fetchone(engine: Engine, sql: str, params: Sequence[Any] = ()) -> tuple | None:
    rows = engine.fetchall(sql, params)
    return rows[0] if rows else None


class DuckDBEngine:
    dialect = "duckdb"

    def __init__(self, con) -> None:
        self.con = con

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, list(params)).fetchall()

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]:
        return {row[0]: str(row[1]) for row in self.fetchall(f"DESCRIBE SELECT * FROM ({sql})", params)}


@functools.lru_cache(maxsize=256)
def transpile(sql: str, dialect: str, escape_percent: bool = False) -> str:
    """`sql` (DuckDB's dialect) in another engine's dialect; unsupported constructs raise rather than degrade.
    `escape_percent` doubles `%` inside string literals, for drivers that format parameters with `%s` (psycopg2
    would otherwise read the `%+` of a regular expression as a placeholder)."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel

    tree = sqlglot.parse_one(sql, read="duckdb")
    if escape_percent:
        tree = tree.transform(
            lambda node: (
                exp.Literal.string(node.this.replace("%", "%%"))
                if isinstance(node, exp.Literal) and node.is_string
                else node
            )
        )
    return tree.sql(dialect=dialect, unsupported_level=ErrorLevel.RAISE)


class PostgresEngine:
    dialect = "postgres"

    def __init__(self, con) -> None:
        self.con = con

    def _execute(self, sql: str, params: Sequence[Any]):
        cursor = self.con.cursor()
        cursor.execute(transpile(sql, self.dialect, escape_percent=bool(params)), list(params))
        return cursor

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with contextlib.closing(self._execute(sql, params)) as cursor:
            return cursor.fetchall()

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]:
        with contextlib.closing(self._execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)) as cursor:
            return {d.name: POSTGRES_TYPES.get(d.type_code, f"OID {d.type_code}") for d in cursor.description}


@contextlib.contextmanager
def connect_engine(url: str, read_only: bool = True) -> Iterator[Engine]:
    """An engine on the warehouse at `url`, closed when the block ends.

    Args:
        url: `duckdb:///absolute/path.duckdb` or `postgresql://user@host:port/database` (a SQLAlchemy driver
            suffix such as `postgresql+psycopg2://` is accepted).
        read_only: DuckDB only: open the file without taking the writer's lock.

    Returns:
        The engine (a context manager's value).
    """
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "duckdb":
        from segflow.core.warehouse import connect

        path = url[len("duckdb://") :]
        with connect(Path(path), read_only=read_only) as con:
            yield DuckDBEngine(con)
    elif scheme in ("postgresql", "postgres"):
        import psycopg2

        con = psycopg2.connect("postgresql" + url[url.index("://") :])
        try:
            con.set_session(readonly=read_only, autocommit=True)
            with con.cursor() as cursor:
                cursor.execute("SET TIME ZONE 'UTC'")
            yield PostgresEngine(con)
        finally:
            con.close()
    else:
        raise ValueError(f"unsupported warehouse URL scheme {scheme!r} in {url!r} (duckdb, postgresql)")
