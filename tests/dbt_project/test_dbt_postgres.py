"""The same dbt project on PostgreSQL (dbt-postgres, the local server) gives the same marts as on DuckDB."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from segflow.core.dbt import dbt_vars, run_dbt
from segflow.extract import run_extract
from tests.conftest import AS_OF

pytestmark = pytest.mark.postgres
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


def test_postgres_build_gives_the_same_marts_as_duckdb(
    tmp_path, small_dataset, make_settings, postgres_database, monkeypatch
):
    server, database = postgres_database
    postgres_url = server.url(database)
    settings = make_settings(tmp_path, small_dataset)
    run_extract(settings, AS_OF, "r")
    variables = dbt_vars(AS_OF.isoformat(), settings)
    run_dbt(settings, ["build", "--exclude", "tag:training", "--quiet"], vars=variables)
    copy_raw_to_postgres(settings.warehouse_path, postgres_url)
    monkeypatch.setenv("SEGFLOW_DBT_TARGET", "postgres")
    for key, value in server.dbt_env(database).items():
        monkeypatch.setenv(key, value)
    # Everything a build runs, unit tests included (their fixtures are portable SQL).
    run_dbt(settings, ["build", "--exclude", "tag:training", "--quiet"], vars=variables)

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
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
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


def test_the_gates_run_on_a_postgresql_warehouse_url(tmp_path, small_dataset, make_settings, postgres_url):
    """With `warehouse.url` on PostgreSQL, the dbt target follows it and the raw and marts gates run inside
    PostgreSQL and record there: the same outcomes as the same run on DuckDB. The tasks that still speak only
    DuckDB refuse to run instead of using a local file."""
    from segflow.core.config import UnsupportedWarehouse
    from segflow.core.dbt import dbt_target
    from segflow.core.engines import connect_engine
    from segflow.quality.gates import validate_mart_tables, validate_raw_tables

    outcomes = {}
    duck = make_settings(tmp_path, small_dataset)
    warehouse = duck.warehouse_path
    run_extract(duck, AS_OF, "r")
    copy_raw_to_postgres(warehouse, postgres_url)
    pg = make_settings(tmp_path, small_dataset, SEGFLOW__WAREHOUSE__URL=postgres_url)
    assert dbt_target(pg, environ={}) == "postgres" and dbt_target(duck, environ={}) == "duckdb"
    with pytest.raises(UnsupportedWarehouse, match="postgresql warehouse"):
        run_extract(pg, AS_OF, "r")
    for settings in (duck, pg):
        validate_raw_tables(settings, AS_OF, "r")
        run_dbt(
            settings,
            ["build", "--exclude", "tag:training", "tag:publish", "--quiet"],
            vars=dbt_vars(str(AS_OF), settings),
        )
        validate_mart_tables(settings, AS_OF, "r")
        with connect_engine(settings.warehouse_url) as engine:
            outcomes[engine.dialect] = sorted(
                engine.fetchall(
                    "SELECT suite, expectation, coalesce(column_name, ''), severity, success, unexpected_count, "
                    "element_count FROM quality.validation_results WHERE run_id = 'r'"
                ),
                key=str,
            )
    assert outcomes["postgres"] == outcomes["duckdb"]
    assert {row[0] for row in outcomes["postgres"]} >= {
        "raw_transactions",
        "marts_user_features",
        "marts_user_segments",
    }
    assert all(row[4] for row in outcomes["postgres"]), "the clean generated data passes every suite"
