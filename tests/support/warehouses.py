"""Comparing a PostgreSQL warehouse with a DuckDB one: copying DuckDB's tables over, and the marts equal column by
column."""

from __future__ import annotations

import json

import duckdb
import pandas as pd

PG_TYPES = {
    "VARCHAR": "text",
    "TIMESTAMP": "timestamp",
    "DATE": "date",
    "DOUBLE": "double precision",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "BOOLEAN": "boolean",
    "JSON": "json",
}


def copy_raw_to_postgres(
    warehouse, url: str, schemas: tuple[str, ...] = ("raw", "scoring"), views: bool = False
) -> None:
    """The tables segflow writes from Python (the raw layer, the scores) as the extract left them in DuckDB, table
    for table, into PostgreSQL; with `views`, the schemas' views too, as tables of their rows."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with duckdb.connect(str(warehouse), read_only=True) as con, engine.begin() as pg:
        for schema in schemas:
            pg.execute(text(f"CREATE SCHEMA {schema}"))
            tables = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type IN (?, ?)",
                [schema, "BASE TABLE", "VIEW" if views else "BASE TABLE"],
            ).fetchall()
            for (table,) in tables:
                columns = con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                    "AND table_name = ? ORDER BY ordinal_position",
                    [schema, table],
                ).fetchall()
                pg.execute(
                    text(
                        f"CREATE TABLE {schema}.{table} (" + ", ".join(f'"{c}" {PG_TYPES[t]}' for c, t in columns) + ")"
                    )
                )
                rows = con.execute(f"SELECT * FROM {schema}.{table}").fetchall()
                if rows:
                    names = ", ".join(f'"{c}"' for c, _ in columns)
                    marks = ", ".join(f":p{i}" for i in range(len(columns)))
                    pg.execute(
                        text(f"INSERT INTO {schema}.{table} ({names}) VALUES ({marks})"),
                        [{f"p{i}": v for i, v in enumerate(r)} for r in rows],
                    )
    engine.dispose()


def assert_marts_equal(warehouse, postgres_url: str) -> None:
    """Every mart of the DuckDB warehouse equals its PostgreSQL build, column by column."""
    from sqlalchemy import create_engine

    engine = create_engine(postgres_url)
    for table, key in [
        ("user_features", ["user_id"]),
        ("user_segments", ["user_id", "segment_name"]),
        ("user_identity_links", ["identifier_type", "identifier"]),
        ("user_features_history", ["user_id", "as_of"]),
        ("user_segment_history", ["user_id", "as_of", "segment_name"]),
        ("segment_sizes_over_time", ["as_of", "segment_name"]),
    ]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            expected = con.execute(f"SELECT * FROM marts.{table}").df().sort_values(key).reset_index(drop=True)
        actual = pd.read_sql(f"SELECT * FROM marts.{table}", engine).sort_values(key).reset_index(drop=True)
        assert list(actual.columns) == list(expected.columns), table
        assert len(actual) == len(expected) > 0, table
        for column in expected.columns:
            e, a = expected[column], actual[column]
            if (
                column == "evidence" and "segment" in table
            ):  # JSON text: the same object, spelled by each database its own way
                parse = lambda values: [json.loads(v) if isinstance(v, str) and v.strip() else None for v in values]  # noqa: E731
                assert parse(a) == parse(e), f"{table}.{column} differs"
            elif pd.api.types.is_numeric_dtype(e) and not pd.api.types.is_bool_dtype(e):
                pd.testing.assert_series_equal(a.astype("float64"), e.astype("float64"), check_names=False, atol=1e-9)
            else:
                assert a.astype(str).tolist() == e.astype(str).tolist(), f"{table}.{column} differs"
    engine.dispose()
