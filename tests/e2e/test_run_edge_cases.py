"""segflow run at the edges: dates before the DAGs' start, a date with no data, reruns with inherited dbt state."""

from __future__ import annotations

import os

import pytest

from segflow.synthetic.generator import generate
from tests.conftest import AS_OF
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


def test_a_rerun_with_an_inherited_dbt_target_path_builds_again(tmp_path):
    data = tmp_path / "data"
    generate(data, users=150, days=40, seed=5, end_date=AS_OF)
    env = _team(tmp_path, "{transactions: {path: data/transactions}}")
    env["DBT_TARGET_PATH"] = str(tmp_path / "dbt-target")  # state that outlives Cosmos's temporary project copy
    for attempt in (1, 2):
        done = run_cli(["run", "--as-of", AS_OF.isoformat(), "--retrain", "never"], env, cwd=tmp_path)
        assert "✓ segflow_build" in done.stdout, f"attempt {attempt}:\n{done.stdout[-3000:]}"
