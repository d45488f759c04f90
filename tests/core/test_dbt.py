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
