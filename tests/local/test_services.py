"""`segflow ui` process bookkeeping and the docs server (the full start/stop runs in tests/e2e/test_operations.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segflow.local import services
from segflow.local.docs_server import render_index, validation_pages


def test_validation_pages_are_listed_newest_first(tmp_path):
    site = tmp_path / "gx"
    for suite, run_time in [
        ("raw_events", "20260910T000101Z"),
        ("marts_user_features", "20260912T000101Z"),
        ("raw_events", "20260911T000101Z"),
    ]:
        page = site / "validations" / suite / f"run_{run_time[:8]}" / run_time / "batch.html"
        page.parent.mkdir(parents=True)
        page.write_text("<html>result</html>")
    pages = validation_pages(site)
    assert [(p["suite"], p["run_time"]) for p in pages] == [
        ("marts_user_features", "20260912T000101Z"),
        ("raw_events", "20260911T000101Z"),
        ("raw_events", "20260910T000101Z"),
    ]
    index = render_index(site)
    assert 'id="latest" href="validations/marts_user_features/run_20260912/20260912T000101Z/batch.html"' in index
    assert "3 validation results" in index
    assert "No validation yet" in render_index(tmp_path / "empty")


@pytest.fixture
def ui_settings(tmp_path, monkeypatch):
    from segflow.core.config import load_settings

    monkeypatch.setenv("SEGFLOW__UI__STATE_DIR", str(tmp_path / "ui"))
    (tmp_path / "ui").mkdir()
    return load_settings()


def test_stop_ends_what_start_recorded_and_nothing_else(ui_settings):
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        records = [
            {
                "name": "ours",
                "pid": ours.pid,
                "started": services._start_ticks(ours.pid),
                "argv": [],
                "health_url": None,
            },
            # a recorded pid whose process start time differs: the pid was reused by someone else
            {
                "name": "reused",
                "pid": stranger.pid,
                "started": services._start_ticks(stranger.pid) - 1,
                "argv": [],
                "health_url": None,
            },
        ]
        services.state_file(ui_settings).write_text(json.dumps(records))
        assert services.stop(ui_settings, timeout=10) == ["ours"]
        assert ours.wait(timeout=10) is not None
        time.sleep(0.2)
        assert stranger.poll() is None
        assert not services.state_file(ui_settings).exists()
    finally:
        for process in (ours, stranger):
            if process.poll() is None:
                os.killpg(process.pid, 9)
            process.wait()


def test_start_refuses_a_port_taken_by_another_program(ui_settings, monkeypatch):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setitem(ui_settings.raw["ui"], "mlflow_port", taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="taken by another program.*ui.mlflow_port"):
            services.start(ui_settings)
    assert not services.state_file(ui_settings).exists() or services.read_state(ui_settings) == []


@pytest.mark.parametrize("command, preloaded", [("scheduler", True), ("dags", False)])
def test_the_scheduler_preloads_task_libraries_for_its_forked_tasks(command, preloaded):
    from segflow.airflow.environment import LOCAL_SETTINGS_DIR

    code = (
        f"import sys; sys.argv = ['airflow', {command!r}]; import airflow_local_settings; "
        "print('great_expectations' in sys.modules and 'dbt.cli.main' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LOCAL_SETTINGS_DIR), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(preloaded)


def test_secret_files_are_readable_by_their_owner_only(tmp_path):
    import stat

    from segflow.local.services import secret_file

    existing = tmp_path / "passwords.json.generated"
    existing.write_text("{}")
    existing.chmod(0o644)
    for path in (secret_file(existing), secret_file(tmp_path / "logs" / "airflow-api-server.log")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert existing.read_text() == "{}", "an existing file keeps its content"


def test_airflow_is_prepared_with_one_config_that_every_component_reads(tmp_path, sources_settings, monkeypatch):
    """`segflow run` and `segflow ui start` prepare Airflow first: the database migrated, the DuckDB pool, and
    airflow.cfg with the secrets Airflow generates. Without that file the api-server and the scheduler, started
    together, each made up a JWT secret of their own and every task failed with "Invalid auth token"."""
    import re
    import sqlite3

    from segflow.airflow.environment import airflow_environ, airflow_home, ensure_metadata_db

    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        monkeypatch.delenv(key)
    settings = sources_settings({}, airflow={"home": str(tmp_path / "airflow")})
    ensure_metadata_db(settings)
    config = (airflow_home(settings) / "airflow.cfg").read_text()
    secret = re.search(r"^jwt_secret = (\S+)$", config, re.MULTILINE)
    assert secret, "airflow.cfg holds no JWT secret"
    read = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "config", "get-value", "api_auth", "jwt_secret"],
        env={**os.environ, **airflow_environ(settings)},
        capture_output=True,
        text=True,
    )
    assert read.stdout.strip() == secret.group(1), read.stderr[-2000:]
    with sqlite3.connect(airflow_home(settings) / "airflow.db") as db:
        assert db.execute("SELECT slots FROM slot_pool WHERE pool = 'duckdb_writer'").fetchone() == (1,)
