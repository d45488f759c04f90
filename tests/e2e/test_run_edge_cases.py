"""segflow run at the edges: dates before the DAGs' start, a date with no data, reruns with inherited dbt state."""

from __future__ import annotations

import os

import pytest

from tests.e2e.test_pipeline import run_cli

pytestmark = pytest.mark.e2e


def _team(root, sources: str = "{}") -> dict[str, str]:
    (root / "segflow.yml").write_text(f"sources: {sources}\nwriteback: {{export_dir: exports}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW__")}
    env.update(SEGFLOW_CONFIG=str(root / "segflow.yml"), SEGFLOW_TASK_RETRIES="0", MPLCONFIGDIR=str(root / "mpl"))
    return env


def test_a_date_before_the_dags_start_is_refused_clearly(tmp_path):
    done = run_cli(["run", "--as-of", "1969-07-20"], _team(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "as-of 1969-07-20 lies before the DAGs' start date" in done.stdout
    assert "✓" not in done.stdout


def test_an_old_date_runs_its_tasks_or_fails_naming_one(tmp_path):
    # 1997: before the DAGs' former start date (2000), Airflow marked every run successful without running a task.
    done = run_cli(["run", "--as-of", "1997-10-01"], _team(tmp_path), cwd=tmp_path)
    assert "· extract …" in done.stdout, done.stdout[-3000:]
    if done.returncode != 0:
        assert "error: segflow_" in done.stdout.strip().splitlines()[-1]
    assert "ran no task" not in done.stdout
