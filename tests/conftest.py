"""Shared fixtures. Every test writes under tmp_path; nothing touches the project's own data/ or $HOME."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from segflow.core.config import REPO_ROOT, load_settings

AS_OF = date(2026, 9, 30)


def settings_env(root: Path, data: Path) -> dict[str, str]:
    """SEGFLOW__ overrides that point every store of a run at `root`, reading sources from `data`."""
    return {
        "SEGFLOW__SOURCES__CRM__URL": f"sqlite:///{data / 'crm.sqlite'}",
        "SEGFLOW__SOURCES__EVENTS__PATH": str(data / "events"),
        "SEGFLOW__SOURCES__TRANSACTIONS__PATH": str(data / "transactions"),
        "SEGFLOW__WAREHOUSE__PATH": str(root / "warehouse.duckdb"),
        "SEGFLOW__MLFLOW__TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SEGFLOW__MLFLOW__ARTIFACT_ROOT": str(root / "mlartifacts"),
        "SEGFLOW__WRITEBACK__CRM_URL": f"sqlite:///{data / 'crm.sqlite'}",
        "SEGFLOW__WRITEBACK__EXPORT_DIR": str(root / "exports"),
        "SEGFLOW__AIRFLOW__HOME": str(root / "airflow"),
        "SEGFLOW__QUALITY__GX_DIR": str(root / "gx"),
        "SEGFLOW__SERVING__SNAPSHOT_DIR": str(root / "serving"),
        "SEGFLOW__SERVING__KEYS_FILE": str(root / "serving" / "api_keys.sqlite"),
    }


@pytest.fixture
def make_settings(monkeypatch):
    def factory(root: Path, data: Path, **extra: str):
        env = {**settings_env(root, data), **extra}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return load_settings(REPO_ROOT / "segflow.yml")

    return factory


@pytest.fixture
def sources_settings(tmp_path, monkeypatch):
    """Settings whose `sources` section is exactly the given dict, with every store under tmp_path."""
    import yaml

    def factory(sources: dict, **sections):
        for key in [k for k in os.environ if k.startswith("SEGFLOW__")]:
            monkeypatch.delenv(key)
        config = {
            "sources": sources,
            "warehouse": {"path": str(tmp_path / "warehouse.duckdb")},
            "quality": {"gx_dir": str(tmp_path / "gx")},
            **sections,
        }
        path = tmp_path / "segflow.yml"
        path.write_text(yaml.safe_dump(config))
        return load_settings(path)

    return factory


def audit_balances(settings) -> list[tuple]:
    """Every load-audit row of the warehouse, asserting rows_in = rows_loaded + rows_quarantined for each."""
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT source, source_file, rows_in, rows_loaded, rows_quarantined FROM raw.load_audit"
        ).fetchall()
    for source, batch, rows_in, loaded, quarantined in rows:
        assert rows_in == loaded + quarantined, (source, batch, rows_in, loaded, quarantined)
    return rows


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small clean dataset shared (read-only) by tests: 400 users over 120 days."""
    from segflow.synthetic.generator import generate

    out = tmp_path_factory.mktemp("small_dataset")
    generate(out, users=400, days=120, seed=7, end_date=AS_OF)
    return out


@pytest.fixture(scope="session")
def dirty_dataset(tmp_path_factory) -> Path:
    from segflow.synthetic.generator import generate

    out = tmp_path_factory.mktemp("dirty_dataset")
    generate(out, users=400, days=60, seed=11, dirty_rate=0.1, end_date=AS_OF)
    return out


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session: SEGFLOW_TEST_POSTGRES_URL, else a throwaway one started from the
    installed binaries, else the test is skipped with the reason (a failure under SEGFLOW_TEST_STRICT)."""
    from tests.support.services import POSTGRES_URL_ENV, ThrowawayPostgres, need, server_from_url, wait_for

    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        server = server_from_url(url)
        wait_for(server, timeout=10)
        yield server
        return
    throwaway = ThrowawayPostgres()
    problem = throwaway.available()
    need(problem is None, problem or "")
    try:
        server = throwaway.start()
        wait_for(server)
        yield server
    finally:
        throwaway.stop()


@pytest.fixture
def postgres_database(postgres_server):
    """A throw-away database on the session's PostgreSQL server, dropped afterwards: (server, database name)."""
    import uuid

    from sqlalchemy import create_engine, text

    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    name = f"segflow_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield postgres_server, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_database):
    """The SQLAlchemy URL of a throw-away database (see postgres_database)."""
    server, name = postgres_database
    return server.url(name)


@pytest.fixture(scope="session")
def redis_url():
    """The Redis server (Celery's broker, the serving store): SEGFLOW_TEST_REDIS_URL, else the local default port."""
    import redis

    from tests.support.services import need

    url = os.environ.get("SEGFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        need(False, f"no Redis server at {url} ({exc}); set SEGFLOW_TEST_REDIS_URL")
    return url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under SEGFLOW_TEST_STRICT (CI, where every service exists) a skip of any origin is a failure."""
    from tests.support.services import STRICT_ENV, strict

    outcome = yield
    report = outcome.get_result()
    if report.skipped and strict() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but {STRICT_ENV} is set and nothing may skip: {reason}"


@pytest.fixture(autouse=True)
def _no_home_writes(monkeypatch, tmp_path):
    # Libraries that cache under $HOME (matplotlib, dbt) write to the test's tmp dir instead.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    yield


def pytest_configure(config):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Hand-written test files are not generated data: they need a salt like real data (tests/core/test_privacy.py
    # covers running without one).
    os.environ.setdefault("SEGFLOW_PII_SALT", "segflow-test-salt")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # parallel workers (make test: pytest -n 2) must not share dbt's target folder
        os.environ["DBT_TARGET_PATH"] = str(REPO_ROOT / "dbt_project" / "target" / f"xdist-{worker}")
