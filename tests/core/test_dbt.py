"""segflow.core.dbt: in-process dbt invocations leave the warehouse file free for the next task."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from segflow.core.dbt import DbtError, run_dbt

# Opens the warehouse read-write from another process: refused while any process still holds the file.
WRITER = """
import sys, duckdb
with duckdb.connect(sys.argv[1]) as con:
    print(con.execute("SELECT count(*) FROM reference.currency_rates").fetchone()[0])
"""


def test_the_warehouse_is_free_once_dbt_returns_even_after_a_failure(tmp_path, make_settings, monkeypatch):
    """The profile keeps one DuckDB connection for a whole invocation (keep_open: fewer reopenings and
    checkpoints); run_dbt closes it when dbt returns, failed or not, so another process - the next Airflow task,
    a reader - and this process itself can open the file again."""
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    settings = make_settings(tmp_path, tmp_path / "data")
    warehouse = str(settings.warehouse_path)

    run_dbt(settings, ["seed", "--select", "currency_rates", "--quiet"])
    other = subprocess.run([sys.executable, "-c", WRITER, warehouse], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert int(other.stdout) > 0

    with pytest.raises(DbtError, match="stg_shop__transactions"):  # its source tables were never loaded
        run_dbt(settings, ["run", "--select", "stg_shop__transactions", "--quiet"])
    other = subprocess.run([sys.executable, "-c", WRITER, warehouse], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    with duckdb.connect(warehouse, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM reference.currency_rates").fetchone()[0] == int(other.stdout)


def test_query_options_of_a_postgresql_url_reach_dbt(tmp_path, postgres_server, monkeypatch):
    """dbt connects with the libpq options of warehouse.url, as the Python tasks do: the session it opens carries
    the URL's application_name, and sslmode=require is refused by a server without SSL (accepted by one with it)."""
    import psycopg2

    from segflow.core.config import load_settings

    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    config = tmp_path / "segflow.yml"

    def settings(query: str):
        config.write_text(f"warehouse:\n  url: {postgres_server.url('postgres')}?{query}\n")
        return load_settings(config, environ={})

    shown = run_dbt(
        settings("application_name=segflow-probe&connect_timeout=5&sslmode=disable"),
        ["show", "--inline", "select current_setting('application_name') as app", "--quiet"],
    )
    assert [tuple(row) for row in shown.results[0].agate_table.rows] == [("segflow-probe",)]

    with psycopg2.connect(postgres_server.url("postgres").replace("+psycopg2", "")) as con, con.cursor() as cur:
        cur.execute("SHOW ssl")
        server_has_ssl = cur.fetchone()[0] == "on"
    if server_has_ssl:
        run_dbt(settings("sslmode=require"), ["debug", "--connection", "--quiet"])
    else:
        with pytest.raises(DbtError):
            run_dbt(settings("sslmode=require"), ["debug", "--connection", "--quiet"])
        run_dbt(settings("sslmode=prefer"), ["debug", "--connection", "--quiet"])
