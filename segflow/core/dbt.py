"""Run dbt programmatically for tasks that need a specific selection (training sets, docs).

The daily build itself runs through Cosmos in the DAG; both use the same project, profile and env.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from segflow.core.config import POSTGRES_URL_OPTIONS, Settings
from segflow.core.resources import BUNDLE_DIR, DBT_PROJECT_DIR

BUNDLED = DBT_PROJECT_DIR.is_relative_to(BUNDLE_DIR)  # installed from a wheel, not a source checkout
DBT_TARGET_ENV = "SEGFLOW_DBT_TARGET"
DEFAULT_DBT_TARGET = "duckdb"


def currency_rates() -> dict[str, float]:
    """Units of each known currency per reporting-currency unit, from the dbt seed (the single source)."""
    import csv

    with open(DBT_PROJECT_DIR / "seeds" / "currency_rates.csv", newline="") as handle:
        return {row["currency"]: float(row["units_per_eur"]) for row in csv.DictReader(handle)}


def dbt_target(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The one mapping from the environment to the dbt target (an output of dbt_project/profiles.yml): the
    variable SEGFLOW_DBT_TARGET, else `dbt.target` of segflow.yml, else the engine of `warehouse.url` (duckdb or
    postgres). The DAGs (at parse time, from the environment Airflow runs with), the CLI, training builds and the
    docs build all call it."""
    environ = os.environ if environ is None else environ
    configured = settings.model.dbt.target if settings is not None else None
    follows = WAREHOUSE_TARGETS[settings.warehouse_engine] if settings is not None else DEFAULT_DBT_TARGET
    return environ.get(DBT_TARGET_ENV) or configured or follows


WAREHOUSE_TARGETS = {"duckdb": "duckdb", "postgresql": "postgres"}  # engine of warehouse.url -> profiles.yml output
# What profiles.yml's postgres output reads, taken from a postgresql:// warehouse.url.
POSTGRES_ENV = {
    "host": "SEGFLOW_PG_HOST",
    "port": "SEGFLOW_PG_PORT",
    "username": "SEGFLOW_PG_USER",
    "password": "SEGFLOW_PG_PASSWORD",
    "database": "SEGFLOW_PG_DATABASE",
    **{option: f"SEGFLOW_PG_{option.upper()}" for option in POSTGRES_URL_OPTIONS},
}
POSTGRES_OPTION_DEFAULTS = {"connect_timeout": "10", "application_name": "dbt"}  # dbt-postgres's own defaults


def warehouse_env(settings: Settings) -> dict[str, str]:
    """The variables profiles.yml reads to reach the configured warehouse: the DuckDB file, or the PostgreSQL
    server's host, port, user, password and database from `warehouse.url` and its query options (sslmode, ...;
    empty when not given, which dbt-postgres and libpq read as unset)."""
    if settings.warehouse_engine == "duckdb":
        return {"SEGFLOW_WAREHOUSE_PATH": str(settings.warehouse_path)}
    from urllib.parse import parse_qsl, unquote, urlsplit

    url = urlsplit(settings.warehouse_url)
    options = dict(parse_qsl(url.query))
    parts = {
        "host": url.hostname or "127.0.0.1",
        "port": str(url.port or 5432),
        "username": unquote(url.username or "postgres"),
        "password": unquote(url.password or ""),
        "database": url.path.lstrip("/") or "postgres",
        **{o: options.get(o, POSTGRES_OPTION_DEFAULTS.get(o, "")) for o in POSTGRES_URL_OPTIONS},
    }
    return {POSTGRES_ENV[key]: value for key, value in parts.items()}


def dbt_env(settings: Settings) -> dict[str, str]:
    """Environment dbt needs: where the warehouse is and the target, from the settings (profiles.yml reads them)."""
    env = {
        **warehouse_env(settings),
        "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR),
        DBT_TARGET_ENV: dbt_target(settings),
    }
    if BUNDLED:  # run state beside the team's configuration, not inside the installed package
        env["DBT_TARGET_PATH"] = os.environ.get("DBT_TARGET_PATH") or str(target_dir(settings))
        env["DBT_LOG_PATH"] = os.environ.get("DBT_LOG_PATH") or str(settings.root / ".dbt" / "logs")
    return env


# As dbt advises: unit tests check model logic against fixed inputs, so the day's data cannot change their outcome;
# they run in development and CI (`make test`), not in every scheduled build. Data tests run in every build.
SCHEDULED_BUILD_FLAGS = ("--exclude-resource-type", "unit_test")
# What the daily build's first dbt step leaves out: training sets (built per feature date by training), the published
# marts (their own step, after the marts gate) and the batch evaluation of the real-time triggers (on demand).
DAILY_BUILD_EXCLUDE = ("tag:training", "tag:publish", "tag:triggers")

# Cosmos runs each dbt task in a fresh copy of the project and keeps dbt's partial-parse state itself: dbt's
# target and log folders must be that copy's own. An inherited DBT_TARGET_PATH pointed the next run at the state of
# a copy deleted since (its seeds "not found"), so the DAGs' dbt tasks set them relative to the copy.
COSMOS_DBT_ENV = {"DBT_TARGET_PATH": "target", "DBT_LOG_PATH": "logs"}

DBT_VAR_NAMES = ("as_of", "churn_horizon_days", "reporting_currency", "audit_schema")  # what dbt_vars() sets
# What changes from one run to the next reaches dbt as environment variables, not --vars: dbt re-parses the whole
# project whenever --vars differ from its saved state (~5 s per invocation), but only the files that read a
# changed environment variable (macros/as_of.sql). The remaining vars come from segflow.yml and rarely change.
DATE_ENV = {"as_of": "SEGFLOW_AS_OF", "audit_schema": "SEGFLOW_AUDIT_SCHEMA", "feature_dates": "SEGFLOW_FEATURE_DATES"}


def split_dbt_vars(vars: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """`vars` as dbt receives them: (the --vars, the environment). Every DATE_ENV variable is in the environment,
    empty when not given, so no value is inherited from an earlier invocation in the same process.

    Args:
        vars: what dbt_vars() returns (plus any extra var), or None.

    Returns:
        The vars to pass as --vars and the DATE_ENV variables to set.
    """
    rest = dict(vars or {})
    env = {}
    for name, variable in DATE_ENV.items():
        value = rest.pop(name, None)
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        env[variable] = "" if value is None else str(value)
    return rest, env


def audit_schema(as_of: str) -> str:
    """Where a build puts its candidates for `as_of` (write-audit-publish). One schema per date: runs of different
    dates may interleave (a backfill beside the daily run) without one publishing the other's candidates."""
    return "audit_" + str(as_of)[:10].replace("-", "")


def dbt_vars(as_of: str, settings: Settings, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "as_of": as_of,
        "churn_horizon_days": settings.horizon_days,
        "reporting_currency": settings.get("features", "reporting_currency", default="EUR"),
        "audit_schema": audit_schema(as_of),
    }
    out.update(extra)
    return out


def target_dir(settings: Settings | None = None) -> Path:
    """Where dbt writes manifest, compiled SQL and run results: DBT_TARGET_PATH (dbt's own variable; the test
    suite gives each parallel worker its own), else dbt_project/target in a source checkout, else - the project
    installed with the package is not the place for run state - <root>/.dbt/target."""
    if os.environ.get("DBT_TARGET_PATH"):
        return Path(os.environ["DBT_TARGET_PATH"])
    if BUNDLED and settings is not None:
        return settings.root / ".dbt" / "target"
    return DBT_PROJECT_DIR / "target"


class DbtError(RuntimeError):
    pass


def release_dbt_duckdb(*_args: Any, **_kwargs: Any) -> None:
    """Close the DuckDB connection dbt-duckdb keeps for the whole process (the profile's `keep_open: true`), so
    that the warehouse file is free once a dbt invocation has returned. Also a Cosmos operator `callback` (hence
    the ignored arguments: the project folder and the task context).
    """
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # dbt-duckdb is not installed: nothing is open
        return
    with DuckDBConnectionManager._LOCK:
        environment, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
    if environment is not None:
        environment.close()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block, the previous values (or their absence) restored after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_dbt(settings: Settings, args: list[str], vars: dict[str, Any] | None = None) -> Any:
    """Invoke dbt in-process; raise DbtError with the failing nodes when the command fails."""
    from dbt.cli.main import dbtRunner

    cli_vars, date_env = split_dbt_vars(vars)
    if settings.warehouse_engine == "duckdb":
        Path(settings.warehouse_path).parent.mkdir(parents=True, exist_ok=True)
    cli = [
        *args,
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target",
        dbt_target(settings),
    ]
    if cli_vars:
        cli += ["--vars", json.dumps(cli_vars)]
    # The variables hold for this invocation only: left in the process, they would choose the target and warehouse
    # of the next invocation with other settings (SEGFLOW_DBT_TARGET wins over the settings by design).
    with _environment({**dbt_env(settings), **date_env}):
        try:
            result = dbtRunner().invoke(cli)
        finally:
            release_dbt_duckdb()
    if not result.success:
        failures = []
        for node in getattr(result.result, "results", None) or []:
            if str(getattr(node, "status", "")).lower() in {"error", "fail", "runtimeerror"}:
                failures.append(f"{node.node.name}: {node.message}")
        detail = "; ".join(failures) or str(result.exception)
        raise DbtError(f"dbt {' '.join(args)} failed: {detail}")
    return result.result
