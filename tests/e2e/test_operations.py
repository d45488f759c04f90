"""Operations on the production configuration without containers: Airflow on PostgreSQL with the LocalExecutor,
started by `segflow ui start` (what `make ui` runs). A 14-day backfill created through Airflow's CLI (what the UI
does) and executed by the running scheduler - beside the real scheduled run that unpausing starts - gives exactly
the marts and score history of running the same days one by one; re-running a single day changes nothing; the
UIs are checked in headless Chromium, with screenshots in artifacts/screenshots/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SEED_AS_OF = date(2026, 9, 9)  # trains the champions the backfilled days are scored with
WINDOW = [date(2026, 9, 10) + timedelta(days=i) for i in range(14)]
BIN = Path(sys.executable).parent
PORTS = {
    "SEGFLOW__UI__AIRFLOW_PORT": "28080",
    "SEGFLOW__UI__MLFLOW_PORT": "25000",
    "SEGFLOW__UI__DOCS_PORT": "28081",
    "SEGFLOW__SERVING__PORT": "28082",
    "SEGFLOW__UI__LOG_SERVER_PORT": "28793",
    "SEGFLOW__UI__TRIGGER_LOG_SERVER_PORT": "28794",
}
# Per table: its key and the columns that record when, not what (left out of the comparison).
COMPARED = {
    "marts.user_features_history": (["as_of", "user_id"], []),
    "marts.user_segment_history": (["as_of", "user_id", "segment_name"], []),
    "marts.segment_membership_events": (["as_of", "user_id", "segment_name", "event"], []),
    "marts.segment_sizes_over_time": (["as_of", "segment_name"], []),
    "marts.user_scores_history": (["as_of", "user_id"], ["scored_at"]),
}


def base_environ() -> dict:
    """This process's environment without Airflow or segflow settings a caller may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SEGFLOW"))}


def run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def side(root: Path, seed: Path, data: Path, **extra: str) -> dict:
    """A copy of the seeded state (warehouse, MLflow store, CRM, serving snapshot) under `root`, and the environment
    using it."""
    shutil.copytree(data, root / "data")
    for name in ("warehouse.duckdb", "mlflow.db", "gx", "serving"):
        src = seed / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    return {
        **base_environ(),
        **settings_env(root, root / "data"),
        "MPLCONFIGDIR": str(root / "mpl"),
        "SEGFLOW__MLFLOW__ARTIFACT_ROOT": str(seed / "mlartifacts"),
        **extra,
    }


def tables(warehouse: Path, days: list[date]) -> dict[str, pd.DataFrame]:
    out = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for table, (key, ignored) in COMPARED.items():
            frame = con.execute(f"SELECT * FROM {table} WHERE as_of BETWEEN ? AND ?", [min(days), max(days)]).df()
            out[table] = frame.drop(columns=ignored).sort_values(key).reset_index(drop=True)
    return out


def assert_same(actual: dict, expected: dict) -> None:
    for table, frame in expected.items():
        assert len(frame) > 0, table
        assert sorted(actual[table]["as_of"].astype(str).unique()) == sorted(frame["as_of"].astype(str).unique()), table
        pd.testing.assert_frame_equal(actual[table], frame, check_like=True, obj=table)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """Generated sources and a state with champions trained as of SEED_AS_OF (one `segflow run`)."""
    from segflow.synthetic.generator import generate

    root = tmp_path_factory.mktemp("ops_seed")
    generate(root / "data", users=250, days=165, seed=23, end_date=date(2026, 9, 30))
    env = {**base_environ(), **settings_env(root, root / "data"), "MPLCONFIGDIR": str(root / "mpl")}
    run([str(BIN / "segflow"), "run", "--as-of", SEED_AS_OF.isoformat(), "--retrain", "always"], env)
    return root


DAY_BY_DAY = """
import sys
from segflow.airflow import callables
from segflow.core.dbt import DAILY_BUILD_EXCLUDE, SCHEDULED_BUILD_FLAGS, dbt_vars, run_dbt

# What each daily run executes, task after task (dags/segflow_build.py, dags/segflow_score.py), one day at a time.
for day in sys.argv[1:]:
    run_id = f"daily__{day}"
    cfg = callables.settings()
    variables = dbt_vars(day, cfg)
    callables.extract(day, run_id)
    callables.validate_raw(day, run_id)
    run_dbt(cfg, ["build", "--exclude", *DAILY_BUILD_EXCLUDE, *SCHEDULED_BUILD_FLAGS, "--quiet"], vars=variables)
    callables.validate_marts(day, run_id)
    run_dbt(cfg, ["build", "--select", "tag:publish", *SCHEDULED_BUILD_FLAGS, "--quiet"], vars=variables)
    callables.discard_candidates(day)
    callables.score(day, run_id)
    callables.write_back(day)
    callables.monitor(day)
"""


@pytest.fixture(scope="module")
def daily(seed, tmp_path_factory):
    """The reference, started in the background: the same days run one by one, in order, each with the task
    callables of a daily run (no scheduler involved)."""
    root = tmp_path_factory.mktemp("ops_daily")
    env = side(root, seed, seed / "data")
    with open(root / "daily.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", DAY_BY_DAY, *map(str, WINDOW)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    yield root, process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(seed, daily, tmp_path_factory, request, postgres_server, redis_url):
    """`segflow ui start` on a PostgreSQL metadata database, with a trigger stream on Redis; stopped with
    `segflow ui stop` afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"segflow_ops_{os.getpid()}"
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    root = tmp_path_factory.mktemp("ops_backfill")
    env = side(
        root,
        seed,
        seed / "data",
        **PORTS,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres_server.url(name),
        SEGFLOW__UI__STATE_DIR=str(root / "ui"),
        SEGFLOW__UI__DOCS_DIR=str(root / "site"),
        SEGFLOW__STREAM__URL=redis_url,
        SEGFLOW__STREAM__KEY_PREFIX=f"segflow-ops-{uuid.uuid4().hex[:8]}",
        SEGFLOW__STREAM__DROP_DIR=str(root / "stream-drop"),
    )
    started = subprocess.run(
        [str(BIN / "segflow"), "ui", "start"], env=env, capture_output=True, text=True, timeout=600
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for dag_id in ("segflow_build", "segflow_score", "segflow_activate"):
            airflow(env, "dags", "unpause", dag_id)
        yield {"root": root, "env": env, "start_output": started.stdout}
    finally:
        stopped = subprocess.run(
            [str(BIN / "segflow"), "ui", "stop"], env=env, capture_output=True, text=True, timeout=120
        )
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        assert stopped.returncode == 0, stopped.stderr
        assert "airflow-scheduler" in stopped.stdout and "stream-consumer" in stopped.stdout
        from segflow.realtime.consumer import redis_client
        from segflow.serving.store import drop_prefix

        client = redis_client(redis_url)
        drop_prefix(client, env["SEGFLOW__STREAM__KEY_PREFIX"])


def airflow(env: dict, *args: str) -> str:
    from segflow.core.config import load_settings
    from segflow.local.services import service_environ

    full = service_environ(load_settings(environ=env), env)
    return run([str(BIN / "airflow"), *args], full, timeout=300).stdout


def metadata(env: dict, sql: str, **params) -> list[dict]:
    """Rows of a query on Airflow's metadata database (cheaper to poll than the CLI)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def runs(env: dict, dag_id: str) -> list[dict]:
    """The DAG's runs, oldest first."""
    return metadata(env, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = :d ORDER BY id", d=dag_id)


def wait_until(condition, timeout: float, what: str, env: dict):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(5)
    raise AssertionError(
        f"timed out waiting for {what}; build runs: {runs(env, 'segflow_build')}; "
        f"score runs: {runs(env, 'segflow_score')}; tasks not done or retried: {task_states(env)}"
    )


def task_states(env: dict) -> list[dict]:
    """Task instances not (yet) successful or tried more than once, with their timings: what a timeout waited on."""
    rows = metadata(
        env,
        "SELECT dag_id, run_id, task_id, state, try_number, queued_dttm, start_date, end_date "
        "FROM task_instance WHERE state IS DISTINCT FROM 'success' OR try_number > 1 ORDER BY start_date NULLS LAST",
    )
    return [{k: str(v) for k, v in row.items()} for row in rows]


def settled(env: dict, build_runs: int) -> bool:
    """At least `build_runs` build runs, all succeeded, and scoring has caught up: no asset event waiting for a
    score run and no score run queued or running (the warehouse itself is not polled: a reader blocks writers)."""
    build, score = runs(env, "segflow_build"), runs(env, "segflow_score")
    failed = [r for r in build + score if r["state"] == "failed"]
    assert not failed, f"failed runs: {failed}"
    queued = "SELECT count(*) AS n FROM asset_dag_run_queue WHERE target_dag_id = 'segflow_score'"
    waiting = metadata(env, queued)[0]["n"]
    return (
        len(build) >= build_runs
        and all(r["state"] == "success" for r in build)
        and not waiting
        and bool(score)
        and all(r["state"] == "success" for r in score)
    )


@pytest.fixture(scope="module")
def backfilled(stack, daily):
    env = stack["env"]
    # Logical date D+1 computes as of D (a run at midnight processes the day that just ended).
    airflow(
        env,
        "backfill",
        "create",
        "--dag-id",
        "segflow_build",
        "--from-date",
        str(WINDOW[0] + timedelta(days=1)),
        "--to-date",
        str(WINDOW[-1] + timedelta(days=1)),
    )
    # A bound on liveness, not a speed goal (BENCHMARKS.md measures speed): 6-15 min beside the rest of the suite on
    # 2 cores (over 25 min before runs were scheduled depth first); a stuck run fails with the task states it waited on.
    wait_until(lambda: settled(env, len(WINDOW) + 1), 2700, "the backfill and the scheduled run", env)
    root, process = daily
    assert process.wait(timeout=1500) == 0, (root / "daily.log").read_text()[-4000:]
    return stack


def test_make_ui_prints_the_urls_and_the_login(stack):
    out = stack["start_output"]
    for url in (
        "http://127.0.0.1:28080/",
        "http://127.0.0.1:25000/",
        "http://127.0.0.1:28081/",
        "http://127.0.0.1:28081/gx/",
        "http://127.0.0.1:28082/docs",
    ):
        assert url in out
    assert "login: admin / " in out and "login: admin / None" not in out
    # The segment API's demo key, printed by `make ui`, opens the API the stack started.
    import urllib.request

    key = re.search(r"key: (sf_\S+)", out).group(1)
    request = urllib.request.Request("http://127.0.0.1:28082/v1/segments", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200  # the seeding run's scoring synced the serving snapshot
        assert json.load(response)["segments"]


def test_backfill_through_the_scheduler_equals_running_each_day(backfilled, daily):
    expected = tables(daily[0] / "warehouse.duckdb", WINDOW)
    assert_same(tables(backfilled["root"] / "warehouse.duckdb", WINDOW), expected)
    build = runs(backfilled["env"], "segflow_build")
    assert sum(r["run_id"].startswith("backfill__") for r in build) == len(WINDOW)
    with duckdb.connect(str(daily[0] / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT DISTINCT as_of FROM marts.user_scores").fetchall() == [(WINDOW[-1],)]
        assert con.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_2%'"
        ).fetchall() == [(0,)]


def test_unpausing_runs_a_real_scheduled_run_on_the_local_executor(backfilled):
    """Unpausing segflow_build made the scheduler start the latest daily interval (logical date: today's midnight,
    as of yesterday) on PostgreSQL with the LocalExecutor; its asset event triggered scoring, and as the latest
    date it owns the current tables, whatever the backfill published around it."""
    scheduled = metadata(
        backfilled["env"],
        "SELECT logical_date, state FROM dag_run WHERE dag_id = 'segflow_build' AND run_type = 'scheduled'",
    )
    assert [r["state"] for r in scheduled] == ["success"]
    day = (scheduled[0]["logical_date"] - timedelta(days=1)).date()
    with duckdb.connect(str(backfilled["root"] / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT DISTINCT as_of FROM marts.user_scores").fetchall() == [(day,)]
        assert con.execute("SELECT DISTINCT as_of FROM marts.user_features").fetchall() == [(day,)]
        assert con.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_2%'"
        ).fetchall() == [(0,)]


def test_rerunning_one_day_changes_nothing(backfilled, daily):
    env = backfilled["env"]
    day = WINDOW[4]
    builds, scores = len(runs(env, "segflow_build")), len(runs(env, "segflow_score"))
    airflow(env, "dags", "trigger", "segflow_build", "--conf", json.dumps({"as_of": day.isoformat()}))
    wait_until(lambda: settled(env, builds + 1) and len(runs(env, "segflow_score")) > scores, 600, "the rerun", env)
    assert_same(tables(backfilled["root"] / "warehouse.duckdb", WINDOW), tables(daily[0] / "warehouse.duckdb", WINDOW))
    with duckdb.connect(str(backfilled["root"] / "warehouse.duckdb"), read_only=True) as con:
        # A rerun of a past day leaves the current tables on the latest day.
        assert (
            con.execute("SELECT max(as_of) FROM marts.user_scores_history").fetchall()
            == con.execute("SELECT DISTINCT as_of FROM marts.user_scores").fetchall()
        )


def test_a_trigger_on_the_stream_runs_segflow_activate_through_the_scheduler(backfilled):
    """`make ui` started the stream consumer: three events of a consenting, tracked customer published now make
    them enter high_intent_now within a second; the consumer's announcement reaches the AssetWatcher in the
    triggerer, the scheduler runs segflow_activate, and the CRM's crm_triggers table holds the customer."""
    import sqlite3
    from datetime import UTC, datetime

    from segflow.core.config import load_settings
    from segflow.realtime.consumer import StreamKeys, redis_client

    env = backfilled["env"]
    settings = load_settings(environ=env)
    serving = backfilled["root"] / "serving"
    version = (serving / "CURRENT").read_text().strip()
    with sqlite3.connect(serving / f"snapshot-{version}.sqlite") as con:
        analytics_id, user = con.execute(
            "SELECT substr(i.identifier, 19), i.user_id FROM identifiers AS i JOIN profiles AS p USING (user_id) "
            "WHERE i.identifier LIKE 'analytics_user_id:%' AND json_extract(p.doc, '$.consent.marketing') "
            "ORDER BY i.identifier LIMIT 1"
        ).fetchone()
    client = redis_client(settings.raw["stream"]["url"])
    keys = StreamKeys(settings.raw["stream"]["key_prefix"])
    runs_before = len(runs(env, "segflow_activate"))
    now = datetime.now(UTC)
    for i, kind in enumerate(["add_to_cart", "begin_checkout", "product_view"]):
        client.xadd(
            keys.events,
            {
                "event_id": f"ops-{i}",
                "anonymous_id": "ops-device",
                "user_id": analytics_id,
                "event_ts": now.isoformat(),
                "event_type": kind,
                "product_category": "books",
            },
        )
    published = time.monotonic()
    while not client.xlen(keys.output) and time.monotonic() - published < 10:
        time.sleep(0.02)
    assert time.monotonic() - published < 1.5, "the trigger took longer than a second (and scheduling slack)"

    def delivered():
        done = [r for r in runs(env, "segflow_activate")[runs_before:] if r["state"] == "success"]
        if not done:
            return None
        with sqlite3.connect(settings.raw["writeback"]["crm_url"].split("sqlite:///", 1)[1]) as crm:
            return crm.execute(
                "SELECT contact_id, trigger_name, active FROM crm_triggers WHERE contact_id = ?", [user]
            ).fetchall()

    rows = wait_until(delivered, 300, "segflow_activate to deliver the trigger", env)
    assert rows == [(user, "high_intent_now", 1)]
    assert [r["run_type"] for r in runs(env, "segflow_activate")[runs_before:]][0] == "asset_triggered"


# --- the UIs in headless Chromium (Debian's chromium + chromium-driver: `make system-deps`; skipped without) ---

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.support.services import program

    chromium, chromedriver = program("chromium", "/usr/bin/chromium"), program("chromedriver", "/usr/bin/chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No background traffic: this machine's network is closed, and tests must not depend on the internet.
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shows(driver, url: str, texts: list[str], screenshot: str, timeout: float = 60) -> str:
    """Open `url`, wait until the page shows every text, save a screenshot; returns the page text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    try:
        WebDriverWait(driver, timeout).until(
            lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts)
        )
    finally:
        driver.save_screenshot(str(SCREENSHOTS / screenshot))
    return driver.find_element(By.TAG_NAME, "body").text


def test_airflow_ui_lists_the_dags_and_shows_a_runs_graph(backfilled, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from segflow.core.config import load_settings
    from segflow.local.services import airflow_login

    user, password = airflow_login(load_settings(environ=backfilled["env"]))
    browser.get("http://127.0.0.1:28080/")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: "/auth/login" not in d.current_url)
    shows(
        browser, "http://127.0.0.1:28080/dags", ["segflow_build", "segflow_score", "segflow_train"], "airflow_dags.png"
    )
    run_id = next(r["run_id"] for r in runs(backfilled["env"], "segflow_build") if r["run_id"].startswith("backfill__"))
    tasks = ["extract", "validate_raw", "dbt_build", "validate_marts", "dbt_publish", "publish_features"]
    shows(
        browser,
        f"http://127.0.0.1:28080/dags/segflow_build/runs/{run_id}",
        [run_id, "Success", *tasks],
        "airflow_run.png",
    )
    browser.find_element(By.CSS_SELECTOR, "button[aria-label^='Show Graph']").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".react-flow__node"))
    graph_nodes = " ".join(n.text for n in browser.find_elements(By.CSS_SELECTOR, ".react-flow__node"))
    browser.save_screenshot(str(SCREENSHOTS / "airflow_run_graph.png"))
    assert all(task in graph_nodes for task in tasks), graph_nodes


def test_mlflow_ui_shows_both_models_with_their_champion(backfilled, browser):
    shows(
        browser,
        "http://127.0.0.1:25000/#/models",
        ["user_segments_clusterer", "user_churn", "@ champion"],
        "mlflow_models.png",
    )


def test_dbt_docs_show_user_features_with_its_columns(backfilled, browser):
    shows(
        browser,
        "http://127.0.0.1:28081/#!/model/model.segflow.user_features",
        ["user_features", "recency_days", "monetary_365d", "engagement_score"],
        "dbt_docs_user_features.png",
    )


def test_gx_data_docs_show_the_latest_validation(backfilled, browser):
    from selenium.webdriver.common.by import By

    text = shows(browser, "http://127.0.0.1:28081/gx/", ["Latest validation"], "gx_data_docs_index.png")
    latest = browser.find_element(By.ID, "latest").text
    assert "run as_of=" in latest, latest  # named by the pipeline: as-of date and Airflow run id
    assert "validation results" in text
    suite = latest.split(",")[0]
    browser.find_element(By.ID, "latest").click()
    shows(
        browser,
        browser.current_url,
        ["Expectation Validation Result", f"Expectation Suite: {suite}", "Status:"],
        "gx_data_docs_latest.png",
    )
