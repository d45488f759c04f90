"""The production stack without containers (docker-compose.yml's services as local processes): Airflow on
PostgreSQL metadata with the CeleryExecutor (Redis broker, PostgreSQL result backend) and two Celery workers started
by `segflow ui start`, an MLflow tracking server on PostgreSQL, and the warehouse on PostgreSQL. The scheduler runs
a real scheduled day end to end through it: the build, then the scoring its asset triggers, tasks executed by the
workers, with the champions an earlier run registered in the tracking server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import settings_env
from tests.e2e.test_operations import airflow, base_environ, metadata, run, runs, task_states

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BIN = Path(sys.executable).parent
PORTS = {
    "SEGFLOW__UI__AIRFLOW_PORT": "28180",
    "SEGFLOW__UI__DOCS_PORT": "28181",
    "SEGFLOW__SERVING__PORT": "28182",
    "SEGFLOW__UI__LOG_SERVER_PORT": "28893",
    "SEGFLOW__UI__TRIGGER_LOG_SERVER_PORT": "28894",
}
MLFLOW_PORT = 25100


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the process serving {url} exited"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s")


def wait_for_runs(env: dict, done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = [r for dag in ("segflow_build", "segflow_score") for r in runs(env, dag) if r["state"] == "failed"]
        assert not failed, f"failed runs: {failed}; tasks: {task_states(env)}"
        if done():
            return
        time.sleep(3)
    raise AssertionError(f"timed out waiting for {what}; tasks not done or retried: {task_states(env)}")


def test_the_scheduler_runs_a_day_through_celery_workers_on_postgresql(tmp_path, postgres_server, redis_url):
    from sqlalchemy import create_engine, text

    from segflow.core.engines import connect_engine
    from segflow.synthetic.generator import generate

    # The day a scheduled run processes now: logical date today 00:00 UTC computes as of yesterday.
    day = datetime.now(UTC).date() - timedelta(days=1)
    names = {role: f"segflow_celery_{role}_{os.getpid()}" for role in ("airflow", "warehouse", "mlflow")}
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {name}"))
    generate(tmp_path / "data", users=500, days=150, seed=21, end_date=day)
    metadata_url = postgres_server.url(names["airflow"])
    env = {
        **base_environ(),
        **settings_env(tmp_path, tmp_path / "data"),
        **PORTS,
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "SEGFLOW__WAREHOUSE__URL": postgres_server.url(names["warehouse"]),
        "SEGFLOW__MLFLOW__TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}",
        "SEGFLOW__UI__STATE_DIR": str(tmp_path / "ui"),
        "SEGFLOW__UI__DOCS_DIR": str(tmp_path / "site"),
        "SEGFLOW__CHURN__TRAINING_SNAPSHOTS": "2",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,  # SQLAlchemy 2.1 would pick psycopg 3
        # A queue of this test's own: a message another run left in the broker is never picked up here.
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"segflow_test_{os.getpid()}",
        # The segment API's serving store in the same Redis, as in docker-compose.yml (keys of this test's own).
        "SEGFLOW__SERVING__URL": redis_url,
        "SEGFLOW__SERVING__KEY_PREFIX": f"segflow-celery-{os.getpid()}",
    }
    tracking = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            postgres_server.url(names["mlflow"]),
            "--artifacts-destination",
            str(tmp_path / "mlartifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(MLFLOW_PORT),
            "--workers",
            "1",
        ],
        env=env,
        stdout=open(tmp_path / "mlflow-server.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = None
    try:
        wait_for_http(f"http://127.0.0.1:{MLFLOW_PORT}/health", tracking, 180)
        # Champions registered in the tracking server by a run of the day before (through Airflow's test runner).
        run([str(BIN / "segflow"), "run", "--as-of", str(day - timedelta(days=1))], env)
        started = subprocess.run(
            [str(BIN / "segflow"), "ui", "start"], env=env, capture_output=True, text=True, timeout=600
        )
        assert started.returncode == 0, started.stdout + started.stderr
        processes = (tmp_path / "ui" / "processes.json").read_text()
        assert processes.count("airflow-celery-worker-") == 2 and '"mlflow"' not in processes
        for dag_id in ("segflow_build", "segflow_score"):
            airflow(env, "dags", "unpause", dag_id)

        def scheduled_day_done() -> bool:
            build, score = runs(env, "segflow_build"), runs(env, "segflow_score")
            return any(r["run_type"] == "scheduled" and r["state"] == "success" for r in build) and any(
                r["run_type"] == "asset_triggered" and r["state"] == "success" for r in score
            )

        wait_for_runs(env, scheduled_day_done, 1200, "the scheduled build and the scoring it triggers")
        executed = metadata(
            env,
            # The scheduler's runs (the seeding `segflow run` ran its tasks in-process, as manual runs).
            "SELECT DISTINCT dag_id, task_id, state, queue FROM task_instance WHERE dag_id IN "
            "('segflow_build', 'segflow_score') AND run_id NOT LIKE 'manual%'",
        )
        assert {r["queue"] for r in executed} == {env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]}
        assert {"extract", "dbt_build", "validate_marts", "score_users", "write_back", "sync_serving"} <= {
            r["task_id"] for r in executed if r["state"] == "success"
        }
        # The segment API `ui start` launched answers from the version the workers loaded into Redis.
        with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['SEGFLOW__SERVING__PORT']}/readyz", timeout=10) as ready:
            assert json.load(ready)["as_of"] == day.isoformat()
        logs = (tmp_path / "ui" / "logs").glob("airflow-celery-worker-*.log")
        busy = [log.name for log in logs if "Executing workload" in log.read_text(errors="replace")]
        with connect_engine(env["SEGFLOW__WAREHOUSE__URL"]) as engine:
            scored = engine.fetchall("SELECT count(*) FROM marts.user_scores_history WHERE as_of = ?", [day])[0][0]
        assert scored > 0, "the scheduled day was scored in the PostgreSQL warehouse"
        assert busy, "the Celery workers executed the tasks"
        assert not list(tmp_path.rglob("*.duckdb")), "nothing was written to a DuckDB file"
    finally:
        if started is not None:
            subprocess.run([str(BIN / "segflow"), "ui", "stop"], env=env, capture_output=True, timeout=120)
        os.killpg(tracking.pid, 15)
        tracking.wait(timeout=30)
        import redis

        client = redis.Redis.from_url(redis_url)
        leftovers = list(client.scan_iter(f"{env['SEGFLOW__SERVING__KEY_PREFIX']}:*"))
        if leftovers:
            client.delete(*leftovers)
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
