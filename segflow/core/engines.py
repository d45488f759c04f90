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
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pandas as pd

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
    temp_schema: str  # where the session's temporary tables live (qualifies a DROP that must not reach a real table)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement (or, without parameters, several separated by `;`) and commit it."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters, all committed together."""
        ...

    def changed(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT, UPDATE or DELETE and commit it; returns the number of rows it changed."""
        ...

    def append(self, table: str, frame: pd.DataFrame) -> None:
        """Append `frame`'s rows to the existing `table`, columns by name, through the engine's bulk path; values
        may be given as text in the form the column's type reads (as DuckDB casts values to VARCHAR)."""
        ...

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """The query's rows as a DataFrame with DuckDB's dtypes (datetime64 dates, nullable integers, floats)."""
        ...

    def transaction(self, **frames: pd.DataFrame) -> contextlib.AbstractContextManager[Any]:
        """A block whose statements commit together at its end or not at all; each keyword's DataFrame is a table
        of that name for the block's SQL (loaded through the engine's bulk path)."""
        ...


def fetchone(engine: Engine, sql: str, params: Sequence[Any] = ()) -> tuple | None:
    rows = engine.fetchall(sql, params)
    return rows[0] if rows else None


def has_rows(engine: Engine, sql: str, params: Sequence[Any] = ()) -> bool:
    """Whether the SELECT `sql` returns any row (reads one at most)."""
    return fetchone(engine, f"SELECT 1 FROM ({sql}) AS q LIMIT 1", params) is not None


def scalar(engine: Engine, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of `sql` (None when it returns no row)."""
    row = fetchone(engine, sql, params)
    return None if row is None else row[0]


class DuckDBEngine:
    dialect = "duckdb"
    temp_schema = "temp"

    def __init__(self, con) -> None:
        self.con = con

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, list(params)).fetchall()

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]:
        return {row[0]: str(row[1]) for row in self.fetchall(f"DESCRIBE SELECT * FROM ({sql})", params)}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, list(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.con.executemany(sql, [list(row) for row in rows])

    def changed(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.con.execute(sql, list(params)).fetchall()[0][0])

    def append(self, table: str, frame: pd.DataFrame) -> None:
        self.con.register("_append_frame", frame)
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _append_frame")
        finally:
            self.con.unregister("_append_frame")

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.con.execute(sql, list(params)).df()

    @contextlib.contextmanager
    def transaction(self, **frames: pd.DataFrame) -> Iterator[DuckDBEngine]:
        from segflow.core.warehouse import transaction

        with transaction(self.con, **frames):
            yield self


@functools.lru_cache(maxsize=256)
def transpile(sql: str, dialect: str, escape_percent: bool = False) -> str:
    """`sql` (DuckDB's dialect) in another engine's dialect; unsupported constructs raise rather than degrade.
    `escape_percent` doubles `%` inside string literals, for drivers that format parameters with `%s` (psycopg2
    would otherwise read the `%+` of a regular expression as a placeholder)."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel

    tree = sqlglot.parse_one(sql, read="duckdb")
    if dialect == "postgres":
        # DuckDB's sha256 hashes a string's UTF-8 bytes; PostgreSQL's takes bytes (sqlglot adds the hex encoding).
        tree = tree.transform(_hash_utf8)
    if escape_percent:
        tree = tree.transform(
            lambda node: (
                exp.Literal.string(node.this.replace("%", "%%"))
                if isinstance(node, exp.Literal) and node.is_string
                else node
            )
        )
    return tree.sql(dialect=dialect, unsupported_level=ErrorLevel.RAISE)


def _hash_utf8(node):
    """DuckDB's sha256(text) hashes the text's UTF-8 bytes; PostgreSQL's sha256 takes bytes."""
    from sqlglot import exp

    if isinstance(node, exp.SHA2) and not isinstance(node.this, exp.Anonymous):
        node = node.copy()
        node.set("this", exp.func("convert_to", node.this, exp.Literal.string("UTF8")))
    return node


INTEGER_OIDS = (20, 21, 23)
TEMPORAL_OIDS = (1082, 1114, 1184)
TEXT_OIDS = (25, 1043)


def postgres_column_type(values: pd.Series) -> str:
    """The PostgreSQL type of a temporary table column holding `values`."""
    import datetime as dt

    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(values):
        return "BIGINT"
    if pd.api.types.is_float_dtype(values):
        return "DOUBLE PRECISION"
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return "TIMESTAMPTZ"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "TIMESTAMP"
    present = values.dropna()
    if len(present) and all(isinstance(v, dt.datetime) for v in present):
        return "TIMESTAMP"
    if len(present) and all(isinstance(v, dt.date) for v in present):
        return "DATE"
    return "TEXT"


COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def copy_text(frame: pd.DataFrame) -> str:
    """`frame` in the text format of PostgreSQL's COPY: tab-separated, backslash escapes, NULL as \\N; floats keep
    every digit (repr), so values round-trip exactly."""
    if frame.empty:
        return ""
    lines: pd.Series | None = None
    for column in frame.columns:
        values = frame[column]
        text = values.astype(str).astype(object)
        for raw, escaped in COPY_ESCAPES:
            text = text.str.replace(raw, escaped, regex=False)
        text = text.where(values.notna(), "\\N")
        lines = text if lines is None else lines + "\t" + text
    return "\n".join(lines) + "\n"  # type: ignore[arg-type]  # a frame with rows has a column


class PostgresEngine:
    dialect = "postgres"
    temp_schema = "pg_temp"

    def __init__(self, con) -> None:
        self.con = con
        self.in_transaction = False

    def _execute(self, sql: str, params: Sequence[Any]):
        cursor = self.con.cursor()
        # psycopg2 formats parameters only when given any: `%` in the SQL stays itself otherwise.
        cursor.execute(transpile(sql, self.dialect, escape_percent=bool(params)), list(params) or None)
        return cursor

    def _unit(self) -> contextlib.AbstractContextManager[Any]:
        """Commit at the end of this statement, unless it is part of a transaction() block."""
        # psycopg2's `with connection` is a transaction (also in autocommit sessions) that commits when it ends.
        return contextlib.nullcontext() if self.in_transaction else self.con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        import sqlglot

        statements = [sql] if params else [s.sql("duckdb") for s in sqlglot.parse(sql, read="duckdb") if s]
        with self._unit():
            for statement in statements:
                self._execute(statement, params).close()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._unit(), contextlib.closing(self.con.cursor()) as cursor:
            cursor.executemany(transpile(sql, self.dialect, escape_percent=True), [list(row) for row in rows])

    def changed(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._unit(), contextlib.closing(self._execute(sql, params)) as cursor:
            return cursor.rowcount

    def append(self, table: str, frame: pd.DataFrame) -> None:
        import io

        from segflow.extract.mapping import quote_ident

        columns = ", ".join(quote_ident(c) for c in frame.columns)
        with self._unit(), contextlib.closing(self.con.cursor()) as cursor:
            cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", io.StringIO(copy_text(frame)))

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with contextlib.closing(self._execute(sql, params)) as cursor:
            return cursor.fetchall()

    def column_types(self, sql: str, params: Sequence[Any] = ()) -> dict[str, str]:
        with contextlib.closing(self._execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)) as cursor:
            return {d.name: POSTGRES_TYPES.get(d.type_code, f"OID {d.type_code}") for d in cursor.description}

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        import pandas as pd

        with contextlib.closing(self._execute(sql, params)) as cursor:
            rows = cursor.fetchall()
            description = cursor.description
        columns: dict[str, Any] = {}
        for i, d in enumerate(description):
            values = [row[i] for row in rows]
            if d.type_code in INTEGER_OIDS:
                columns[d.name] = pd.array(values, dtype="Int64")
            elif d.type_code in (700, 701, 1700):  # NUMERIC arrives as Decimal
                columns[d.name] = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype("float64")
            elif d.type_code in TEMPORAL_OIDS:
                aware = d.type_code == 1184
                columns[d.name] = pd.to_datetime(pd.Series(values, dtype="object"), utc=aware).astype(
                    "datetime64[us, UTC]" if aware else "datetime64[us]"  # DuckDB's resolution
                )
            elif d.type_code == 16:  # BOOLEAN, nullable
                columns[d.name] = pd.array(values, dtype="boolean")
            elif d.type_code in TEXT_OIDS:  # pandas' string dtype, as DuckDB returns text
                columns[d.name] = pd.Series(values, dtype="str")
            else:
                columns[d.name] = pd.Series(values, dtype="object")
        return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))

    @contextlib.contextmanager
    def transaction(self, **frames: pd.DataFrame) -> Iterator[PostgresEngine]:
        import io

        from segflow.extract.mapping import quote_ident

        with self.con:  # commits when the block ends, rolls back on an exception
            self.in_transaction = True
            try:
                with contextlib.closing(self.con.cursor()) as cursor:
                    for name, frame in frames.items():
                        columns = ", ".join(f"{quote_ident(c)} {postgres_column_type(frame[c])}" for c in frame.columns)
                        cursor.execute(f"CREATE TEMPORARY TABLE {quote_ident(name)} ({columns}) ON COMMIT DROP")
                        # COPY, PostgreSQL's bulk path, in its text format (CSV cannot tell NULL from '').
                        cursor.copy_expert(f"COPY {quote_ident(name)} FROM STDIN", io.StringIO(copy_text(frame)))
                yield self
            finally:
                self.in_transaction = False


@contextlib.contextmanager
def connect_engine(url: str, read_only: bool = True) -> Iterator[Engine]:
    """An engine on the warehouse at `url`, closed when the block ends.

    Args:
        url: `duckdb:////absolute/path.duckdb` (`duckdb:///relative.duckdb`) or
            `postgresql://user@host:port/database` (a SQLAlchemy driver suffix such as `+psycopg2` is accepted).
        read_only: DuckDB only: open the file without taking the writer's lock.

    Returns:
        The engine (a context manager's value).
    """
    from segflow.core.config import WAREHOUSE_SCHEMES, duckdb_file

    scheme = urlsplit(url).scheme.split("+")[0]
    engine = WAREHOUSE_SCHEMES.get(scheme)
    if engine == "duckdb":
        from segflow.core.warehouse import connect

        with connect(Path(duckdb_file(url)), read_only=read_only) as con:
            yield DuckDBEngine(con)
    elif engine == "postgresql":
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
