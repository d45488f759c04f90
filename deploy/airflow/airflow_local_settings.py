"""Airflow local settings for segflow (on PYTHONPATH through segflow.airflow.environment.airflow_environ).

The scheduler preloads the heavy libraries the tasks use. The LocalExecutor forks every task from the
scheduler, so a task starts with them already in memory instead of importing them again: Great Expectations
alone takes about 7 s to import on 2 cores, dbt, MLflow and scikit-learn about 3 s each - most of a small task's
time, and a 14-day backfill runs ~150 tasks. Other Airflow commands (CLI, api-server, workers of other
executors) skip it; SEGFLOW_PRELOAD=0 turns it off.
"""

import os
import sys

__all__: list[str] = []  # no cluster policies here

if os.environ.get("SEGFLOW_PRELOAD", "1") != "0" and sys.argv[1:2] == ["scheduler"]:
    from segflow.airflow.environment import preload_task_libraries

    preload_task_libraries()
