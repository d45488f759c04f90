"""The same pipeline on PostgreSQL (`warehouse.url`; dbt-postgres, the local server): the same marts, gate outcomes
and models as on DuckDB."""

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


def test_gates_and_training_run_on_a_postgresql_warehouse_url(tmp_path, make_settings, postgres_url):
    """With `warehouse.url` on PostgreSQL, the dbt target follows it (every model, data and unit test built there);
    the raw and marts gates run inside PostgreSQL and record there, and training reads its features and writes its
    references there: the same marts, gate outcomes and model metrics as the same run on DuckDB. The tasks that still speak only DuckDB refuse to run instead of
    using a local file."""
    from segflow.core.config import UnsupportedWarehouse
    from segflow.core.dbt import dbt_target
    from segflow.core.engines import connect_engine
    from segflow.ml.train import train_models
    from segflow.quality.gates import validate_mart_tables, validate_raw_tables
    from segflow.synthetic.generator import generate

    data = tmp_path / "data"  # enough history for two labelled training snapshots
    generate(data, users=600, days=150, seed=21, end_date=AS_OF)
    fewer_snapshots = {"SEGFLOW__CHURN__TRAINING_SNAPSHOTS": "2"}
    duck = make_settings(tmp_path, data, **fewer_snapshots)
    warehouse = duck.warehouse_path
    run_extract(duck, AS_OF, "r")
    copy_raw_to_postgres(warehouse, postgres_url)
    pg = make_settings(
        tmp_path,
        data,
        SEGFLOW__WAREHOUSE__URL=postgres_url,
        SEGFLOW__MLFLOW__TRACKING_URI=f"sqlite:///{tmp_path / 'pg-mlflow.db'}",
        SEGFLOW__MLFLOW__ARTIFACT_ROOT=str(tmp_path / "pg-mlartifacts"),
        **fewer_snapshots,
    )
    assert dbt_target(pg, environ={}) == "postgres" and dbt_target(duck, environ={}) == "duckdb"
    with pytest.raises(UnsupportedWarehouse, match="postgresql warehouse"):
        run_extract(pg, AS_OF, "r")
    outcomes, trained, references = {}, {}, {}
    for settings in (duck, pg):
        variables = dbt_vars(str(AS_OF), settings)
        validate_raw_tables(settings, AS_OF, "r")
        run_dbt(settings, ["build", "--exclude", "tag:training", "tag:publish", "--quiet"], vars=variables)
        validate_mart_tables(settings, AS_OF, "r")
        run_dbt(settings, ["build", "--select", "tag:publish", "--quiet"], vars=variables)
        trained[settings.warehouse_engine] = train_models(settings, AS_OF)
        with connect_engine(settings.warehouse_url) as engine:
            outcomes[engine.dialect] = sorted(
                engine.fetchall(
                    "SELECT suite, expectation, coalesce(column_name, ''), severity, success, unexpected_count, "
                    "element_count FROM quality.validation_results WHERE run_id = 'r'"
                ),
                key=str,
            )
            references[engine.dialect] = engine.fetchall(
                "SELECT model_name, model_version, rows FROM ml.model_references ORDER BY 1, 2"
            )
    assert outcomes["postgres"] == outcomes["duckdb"]
    assert {row[0] for row in outcomes["postgres"]} >= {
        "raw_transactions",
        "marts_user_features",
        "marts_user_segments",
    }
    assert all(row[4] for row in outcomes["postgres"]), "the clean generated data passes every suite"
    assert references["postgres"] == references["duckdb"] and len(references["duckdb"]) >= 2
    # Model metrics within tolerance (the same features in, the same seeds: in practice identical).
    for model in ("clusterer", "churn", "lifetime_value"):
        on_duckdb, on_postgres = getattr(trained["duckdb"], model), getattr(trained["postgresql"], model)
        assert on_postgres.keys() == on_duckdb.keys(), model
        for key, value in on_duckdb.items():
            if isinstance(value, float):
                assert on_postgres[key] == pytest.approx(value, rel=1e-6), f"{model}.{key}"
            else:
                assert on_postgres[key] == value, f"{model}.{key}"
    assert trained["postgresql"].churn["roc_auc"] > 0.7
    assert_marts_equal(warehouse, postgres_url)
