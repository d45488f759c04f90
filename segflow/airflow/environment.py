"""The Airflow environment segflow runs in: everything under the project directory, nothing in $HOME.

`airflow_environ()` is the single place that maps segflow settings to Airflow/dbt/MLflow environment
variables; the CLI, the Makefile (via `segflow env`) and the tests all use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from segflow.core.config import Settings
from segflow.core.dbt import DBT_TARGET_ENV, dbt_target, warehouse_env
from segflow.core.resources import AIRFLOW_SETTINGS_DIR, DAGS_FOLDER, DBT_PROJECT_DIR, PACKAGE_DIR

LOCAL_SETTINGS_DIR = AIRFLOW_SETTINGS_DIR  # airflow_local_settings.py


def airflow_home(settings: Settings) -> Path:
    return Path(settings.get("airflow", "home", default=str(settings.root / ".airflow")))


def airflow_environ(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables to export before Airflow is imported. Airflow settings already set in `environ` win, so an
    operator can point Airflow at PostgreSQL with AIRFLOW__DATABASE__SQL_ALCHEMY_CONN; what segflow.yml
    determines (warehouse, MLflow store, config file) always comes from the settings."""
    environ = dict(os.environ if environ is None else environ)
    home = airflow_home(settings)
    wanted = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos_cache"),
        **warehouse_env(settings),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR),
        DBT_TARGET_ENV: dbt_target(settings, environ),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PACKAGE_DIR.parent), str(LOCAL_SETTINGS_DIR), environ.get("PYTHONPATH", "")])
        ),
        # Airflow's components spawn `airflow ...` by name: the project's environment comes first.
        "PATH": os.pathsep.join(filter(None, [str(Path(sys.executable).parent), environ.get("PATH", "")])),
    }
    if settings.config_file is not None:
        wanted["SEGFLOW_CONFIG"] = str(settings.config_file)
    stream_url = settings.raw["stream"].get("url")
    if stream_url:
        wanted["AIRFLOW_CONN_SEGFLOW_STREAM"] = redis_connection_uri(stream_url)
    # Derived from the settings (which already take SEGFLOW__ overrides): a value inherited from another run's
    # environment must not point this run's dbt at another warehouse.
    derived = (
        "PYTHONPATH",
        "PATH",
        *warehouse_env(settings),
        "MLFLOW_TRACKING_URI",
        "SEGFLOW_CONFIG",
        "AIRFLOW_CONN_SEGFLOW_STREAM",
        "DBT_PROFILES_DIR",
        DBT_TARGET_ENV,
    )
    return {k: v if k in derived else environ.get(k, v) for k, v in wanted.items()}


def redis_connection_uri(url: str) -> str:
    """A redis:// URL as an Airflow connection URI: the Redis hook reads the database number from the `db` extra
    only (a path /N would silently mean database 0)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("db", parts.path.strip("/") or "0")
    if parts.scheme == "rediss":
        query.setdefault("ssl", "true")  # the hook turns TLS on from this extra, not from the scheme
    return f"redis://{parts.netloc}?{urlencode(query)}"


PRELOADED = (
    "great_expectations",
    "dbt.cli.main",
    "dbt.adapters.duckdb",
    "mlflow.sklearn",
    "sklearn.ensemble",
    "sklearn.cluster",
    "sklearn.mixture",
    "duckdb",
    "pandas",
    "segflow.quality.gates",
    "segflow.extract",
)


def preload_task_libraries() -> list[str]:
    """Import what tasks import, in the scheduler, before the LocalExecutor forks its workers (see
    deploy/airflow/airflow_local_settings.py). A library that fails to import is left to the task to report."""
    import importlib
    import logging

    loaded = []
    for name in PRELOADED:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:  # noqa: BLE001 - never keep the scheduler from starting
            logging.getLogger(__name__).warning("preloading %s failed: %s", name, exc)
    return loaded


def apply_environ(settings: Settings) -> dict[str, str]:
    env = airflow_environ(settings)
    os.environ.update(env)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


# What `airflow db migrate` and `airflow pools set` do, in one interpreter: each Airflow CLI call costs seconds of
# start-up and import before its work, and every `segflow run` and `segflow ui start` prepares the database.
# Like the CLI, it first writes airflow.cfg with its generated secrets: components started together without one
# (api-server, scheduler) would each generate their own JWT secret, and tasks fail with "Invalid auth token".
_PREPARE_METADATA_DB = """
import sys
from airflow.configuration import write_default_airflow_configuration_if_needed
write_default_airflow_configuration_if_needed()
from airflow.models.pool import Pool
from airflow.utils import db
from airflow.utils.providers_configuration_loader import providers_configuration_loaded
providers_configuration_loaded(db.upgradedb)()  # as the CLI's `db migrate` runs it
Pool.create_or_update_pool(sys.argv[1], 1, sys.argv[2], include_deferred=False)
"""


def ensure_metadata_db(settings: Settings) -> None:
    """Create/upgrade the Airflow metadata DB and the DuckDB writer pool (idempotent)."""
    from segflow.airflow.callables import DUCKDB_POOL

    result = subprocess.run(
        [sys.executable, "-c", _PREPARE_METADATA_DB, DUCKDB_POOL, "DuckDB allows one writer process per file"],
        env={**os.environ, **airflow_environ(settings)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"preparing the Airflow metadata DB (migration, pool) failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
