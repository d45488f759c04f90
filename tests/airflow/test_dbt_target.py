"""SEGFLOW_DBT_TARGET reaches the build DAG's dbt task: the DAG's own `dbt_build` task, run by Airflow's DAG test
runner after the extract and raw gate it depends on, builds its audit candidates on PostgreSQL (the profile's
`postgres` target) instead of DuckDB."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import duckdb
import pytest
from sqlalchemy import create_engine, text

from segflow.core.config import REPO_ROOT
from segflow.core.dbt import dbt_target
from segflow.extract import run_extract
from tests.conftest import AS_OF
from tests.support.warehouses import copy_raw_to_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RUN_DBT_BUILD_TASK = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, timezone
    from segflow.airflow.environment import apply_environ, ensure_metadata_db
    from segflow.core.config import load_settings
    settings = load_settings()
    apply_environ(settings)
    ensure_metadata_db(settings)
    from airflow.dag_processing.dagbag import DagBag
    from segflow.core.resources import DAGS_FOLDER
    dag = DagBag(dag_folder=str(DAGS_FOLDER / "segflow_build.py")).get_dag("segflow_build")
    print("profile target:", dag.get_task("dbt_build").profile_config.target_name)
    # dbt_build and what runs before it (the extract and raw gate, on the DuckDB warehouse); nothing after it.
    subset = dag.partial_subset("dbt_build", include_upstream=True)
    day = sys.argv[1]
    run = subset.test(logical_date=datetime.fromisoformat(day).replace(tzinfo=timezone.utc) + timedelta(days=1),
                      run_conf={"as_of": day})
    print("state:", run.state, sorted((ti.task_id, str(ti.state)) for ti in run.get_task_instances()))
""")


def test_the_target_function_reads_the_environment_then_the_settings(tmp_path):
    from segflow.core.config import load_settings

    cfg = tmp_path / "segflow.yml"
    cfg.write_text("dbt:\n  target: postgres\n")
    assert dbt_target(load_settings(cfg, environ={}), environ={}) == "postgres"
    assert dbt_target(load_settings(cfg, environ={}), environ={"SEGFLOW_DBT_TARGET": "spark"}) == "spark"
    assert dbt_target(None, environ={}) == "duckdb"


def test_the_build_dags_dbt_task_builds_on_the_target_named_by_the_environment(
    tmp_path, small_dataset, make_settings, postgres_database
):
    server, database = postgres_database
    settings = make_settings(tmp_path, small_dataset)
    run_extract(settings, AS_OF, "r")
    copy_raw_to_postgres(settings.warehouse_path, server.url(database))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SEGFLOW_DBT"))}
    env.update(
        server.dbt_env(database),
        SEGFLOW_DBT_TARGET="postgres",
        SEGFLOW_TASK_RETRIES="0",
        DBT_TARGET_PATH=str(tmp_path / "dbt_target"),
        DBT_LOG_PATH=str(tmp_path / "dbt_logs"),
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN_DBT_BUILD_TASK, AS_OF.isoformat()],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert "profile target: postgres" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "state: success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    schema = "audit_" + AS_OF.isoformat().replace("-", "")
    engine = create_engine(server.url(database))
    try:
        with engine.connect() as conn:
            on_postgres = conn.execute(text(f"SELECT count(*) FROM {schema}.audit_user_features")).scalar()
    finally:
        engine.dispose()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        on_duckdb = con.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [schema]
        ).fetchone()[0]
    assert on_postgres > 300, "the DAG's dbt task built the candidates on PostgreSQL"
    assert on_duckdb == 0, "and not in the DuckDB warehouse"
