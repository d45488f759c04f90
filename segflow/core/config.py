"""Configuration: one YAML file, environment variables on top, paths resolved against the project root.

Lookup order for the file: explicit path (``--config``) > ``SEGFLOW_CONFIG`` > ``./segflow.yml`` >
the repository's ``segflow.yml``. Any key can be overridden with ``SEGFLOW__SECTION__KEY=value``
(double underscores separate nesting levels), e.g. ``SEGFLOW__WAREHOUSE__PATH=/data/wh.duckdb``.
Secrets never live in the file: URLs may reference ``${ENV_VAR}`` and are expanded at load time.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "SEGFLOW__"

DEFAULTS: dict[str, Any] = {
    # Relative paths below are resolved against `root`, itself relative to the config file.
    "root": ".",
    "sources": {
        "crm": {"url": "sqlite:///data/generated/crm.sqlite", "table": "contacts", "lookback_hours": 72},
        "events": {"path": "data/generated/events", "pattern": ["*.jsonl", "*.jsonl.gz"]},
        "transactions": {"path": "data/generated/transactions", "pattern": ["*.csv", "*.csv.gz"]},
    },
    "warehouse": {"path": "warehouse/segflow.duckdb"},
    "mlflow": {
        "tracking_uri": "sqlite:///mlruns/mlflow.db",
        "artifact_root": "mlruns/artifacts",
        "experiment": "segflow",
    },
    "writeback": {
        "crm_url": "sqlite:///data/generated/crm.sqlite",
        "crm_table": "crm_segments",
        "export_dir": "exports/activation",
    },
    "features": {"reporting_currency": "EUR"},
    "churn": {"horizon_days": 90, "risk_bands": {"medium": 0.3, "high": 0.6}, "champion_tolerance": 0.0},
    "clustering": {"k_min": 3, "k_max": 8, "sample_size": 20000, "seed": 42},
    "quality": {"expectations_dir": "expectations", "gx_dir": "gx", "segment_size_ratio": {"min": 0.5, "max": 2.0}},
    # `segflow ui` (make ui): local web UIs, their process ids and logs, and the static docs they serve.
    "ui": {"host": "127.0.0.1", "airflow_port": 8080, "mlflow_port": 5000, "docs_port": 8081,
           "log_server_port": 8793, "trigger_log_server_port": 8794, "state_dir": ".ui", "docs_dir": "docs/site"},
}

PATH_KEYS = [
    ("warehouse", "path"),
    ("ui", "state_dir"),
    ("ui", "docs_dir"),
    ("mlflow", "artifact_root"),
    ("writeback", "export_dir"),
    ("quality", "expectations_dir"),
    ("quality", "gx_dir"),
]
URL_KEYS = [("writeback", "crm_url"), ("mlflow", "tracking_uri")]


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: str) -> Any:
    """Env values are strings; parse them as YAML scalars so numbers and booleans keep their type."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_env_overrides(data: dict, environ: dict[str, str]) -> dict:
    data = copy.deepcopy(data)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _coerce(raw)
    return data


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env_refs(value: str, environ: dict[str, str]) -> str:
    """Expand ${NAME} (must be set) and ${NAME:-default} (default when unset or empty)."""
    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if environ.get(name):
            return environ[name]
        if default is not None:
            return default
        if name not in environ:
            raise ValueError(f"configuration references ${{{name}}} but it is not set in the environment")
        return environ[name]

    return _ENV_REF.sub(repl, value)


def resolve_sqlite_url(url: str, root: Path) -> str:
    """Make relative SQLite paths absolute so every process (scheduler, workers, tests) agrees."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url


def find_config_file(explicit: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    for candidate in (explicit, environ.get("SEGFLOW_CONFIG"), Path.cwd() / "segflow.yml", REPO_ROOT / "segflow.yml"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
        if candidate and candidate in (explicit, environ.get("SEGFLOW_CONFIG")):
            raise FileNotFoundError(f"config file not found: {candidate}")
    return None


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. `raw` keeps the merged dict for sections without a typed accessor."""

    raw: dict[str, Any]
    root: Path
    config_file: Path | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.raw
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    @property
    def warehouse_path(self) -> Path:
        return Path(self.raw["warehouse"]["path"])

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.raw["mlflow"]["tracking_uri"]

    @property
    def horizon_days(self) -> int:
        return int(self.raw["churn"]["horizon_days"])


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    config_file = find_config_file(path, environ)
    data: dict[str, Any] = DEFAULTS
    base_dir = REPO_ROOT
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: top level must be a mapping")
        data = _deep_merge(DEFAULTS, loaded)
        if "sources" in loaded:
            # A config lists its sources completely: defaults for the generated data do not leak in.
            data["sources"] = copy.deepcopy(loaded["sources"]) or {}
        base_dir = config_file.parent
    data = apply_env_overrides(data, environ)
    root = (base_dir / str(data.get("root", "."))).resolve()
    data["root"] = str(root)
    for keys in PATH_KEYS:
        node = data
        for key in keys[:-1]:
            node = node.get(key, {})
        if node.get(keys[-1]):
            node[keys[-1]] = str((root / expand_env_refs(str(node[keys[-1]]), environ)).resolve())
    for source in (data.get("sources") or {}).values():
        # Source paths are resolved like every path; URLs get ${ENV} expansion and absolute SQLite paths.
        if isinstance(source, dict) and source.get("path"):
            source["path"] = str((root / expand_env_refs(str(source["path"]), environ)).resolve())
        if isinstance(source, dict) and source.get("url"):
            source["url"] = resolve_sqlite_url(expand_env_refs(str(source["url"]), environ), root)
    for keys in URL_KEYS:
        node = data
        for key in keys[:-1]:
            node = node.get(key, {})
        if node.get(keys[-1]):
            node[keys[-1]] = resolve_sqlite_url(expand_env_refs(str(node[keys[-1]]), environ), root)
    return Settings(raw=data, root=root, config_file=config_file)
