"""Configuration: one YAML file, environment overrides on top, typed and validated in one place.

Lookup order for the file: explicit path (``--config``) > ``SEGFLOW_CONFIG`` > ``./segflow.yml`` >
the source checkout's ``segflow.yml``. Every key, its type and its default is declared once, in the models
below (docs/configuration.md is generated from them). Any key can be overridden with
``SEGFLOW__SECTION__KEY=value`` (double underscores separate nesting levels), e.g.
``SEGFLOW__WAREHOUSE__PATH=/data/wh.duckdb``. Secrets never live in the file: URLs and paths may reference
``${ENV_VAR}`` (or ``${ENV_VAR:-default}``), expanded at load time.

An unknown key - in the file or in a ``SEGFLOW__`` variable - is refused with its path and the closest valid
key; invalid YAML names the file, line and column. Every such problem is a ``ConfigError``: one line, which
the CLI prints and exits with status 2.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "SEGFLOW__"


class ConfigError(ValueError):
    """The configuration cannot be used. The message is one line naming the file or variable and the key."""


class UnsupportedWarehouse(ConfigError):
    """The configured warehouse engine cannot run the task asked of it (yet)."""


WAREHOUSE_SCHEMES = {"duckdb": "duckdb", "postgresql": "postgresql", "postgres": "postgresql"}
# Query options of a postgresql:// warehouse.url: libpq's, which both the Python tasks (psycopg2 reads the URL) and
# dbt (profiles.yml, from segflow.core.dbt.warehouse_env) receive. Any other option would reach one and not the other.
POSTGRES_URL_OPTIONS = ("sslmode", "sslcert", "sslkey", "sslrootcert", "connect_timeout", "application_name")


def warehouse_scheme(url: str) -> str:
    """The engine a warehouse URL names (`duckdb` or `postgresql`; a driver suffix such as `+psycopg2` is ignored).

    Args:
        url: a `warehouse.url` value.

    Returns:
        The engine's name; raises ConfigError for any other scheme.
    """
    scheme = url.split("://", 1)[0].split("+")[0].lower() if "://" in url else ""
    if scheme not in WAREHOUSE_SCHEMES:
        raise ConfigError(
            f"warehouse.url: unsupported scheme {scheme or url!r:.40} (duckdb:///path or postgresql://...)"
        )
    if WAREHOUSE_SCHEMES[scheme] == "postgresql":
        from urllib.parse import parse_qsl, urlsplit

        unknown = sorted({k for k, _ in parse_qsl(urlsplit(url).query)} - set(POSTGRES_URL_OPTIONS))
        if unknown:
            raise ConfigError(
                f"warehouse.url: query option(s) {', '.join(o[:40] for o in unknown)} not supported "
                f"(supported: {', '.join(POSTGRES_URL_OPTIONS)})"
            )
    return WAREHOUSE_SCHEMES[scheme]


def duckdb_file(url: str) -> str:
    """The file of a DuckDB URL as SQLAlchemy reads them: `duckdb:///relative.duckdb`, `duckdb:////absolute.duckdb`
    (empty when the URL names none)."""
    return url.split(":///", 1)[1] if ":///" in url else ""


# --- the schema: every key, its type and default -----------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# Keys of a source by kind (sources.<name>); `kind` is inferred from them when omitted (docs/extracts.md).
SOURCE_KIND_KEYS: dict[str, frozenset[str]] = {
    "sql": frozenset({"url", "conn_id", "table", "schema", "watermark_column", "lookback_hours"}),
    "files": frozenset({"path", "pattern", "format", "encoding", "delimiter", "allow_empty"}),
    "http": frozenset(
        {
            "url",
            "conn_id",
            "auth",
            "params",
            "records_path",
            "pagination",
            "start_date",
            "max_retries",
            "backoff_seconds",
            "max_backoff_seconds",
            "timeout_seconds",
            "headers",
            "interval_params",
            "page_size",
        }
    ),
}
SOURCE_COMMON_KEYS = frozenset({"kind", "dataset", "mapping", "enabled", "description"})
MAPPING_KEYS = frozenset({"rename", "constants", "derive", "values", "formats", "timezone", "decimal"})


class WarehouseConfig(_Section):
    path: str = Field("warehouse/segflow.duckdb", description="The DuckDB warehouse file (when `url` is not set).")
    url: str | None = Field(
        None,
        description="Where the warehouse is: `duckdb:///path` (default: `path`) or "
        "`postgresql://user@host:port/database` (password via ${ENV}). The dbt target follows it; docs/production.md "
        "lists which tasks run on which engine.",
    )


class DbtConfig(_Section):
    target: str | None = Field(
        None,
        description="Output of dbt_project/profiles.yml to build with (default: the engine of warehouse.url); "
        "the environment variable SEGFLOW_DBT_TARGET wins.",
    )


class MlflowConfig(_Section):
    tracking_uri: str = Field("sqlite:///mlruns/mlflow.db", description="MLflow tracking and registry store.")
    artifact_root: str | None = Field("mlruns/artifacts", description="Where new experiments keep their artifacts.")
    experiment: str = Field("segflow", description="MLflow experiment of training and monitoring runs.")


class WritebackConfig(_Section):
    crm_url: str | None = Field(
        None, description="SQLAlchemy URL of the CRM database receiving crm_segments (unset: no CRM write-back)."
    )
    crm_table: str = Field("crm_segments", description="Table the scores are upserted into.")
    export_dir: str = Field("exports/activation", description="Activation export folder (as_of=<date>/segments.*).")


class FeaturesConfig(_Section):
    reporting_currency: str = Field("EUR", description="Currency of every amount in the marts.")


class RiskBands(_Section):
    medium: float = Field(0.3, gt=0, lt=1, description="Churn probability from which a buyer is 'medium' risk.")
    high: float = Field(0.6, gt=0, lt=1, description="Churn probability from which a buyer is 'high' risk.")

    @model_validator(mode="after")
    def _ordered(self) -> RiskBands:
        if self.medium >= self.high:
            raise ValueError(f"medium ({self.medium}) must be below high ({self.high})")
        return self


ChurnCandidate = Literal["logistic_regression", "gradient_boosting", "ensemble"]
ClusterAlgorithm = Literal["kmeans", "minibatch_kmeans", "gaussian_mixture"]
CHURN_CANDIDATES: tuple[ChurnCandidate, ...] = ("logistic_regression", "gradient_boosting", "ensemble")
CLUSTER_ALGORITHMS: tuple[ClusterAlgorithm, ...] = ("kmeans", "minibatch_kmeans", "gaussian_mixture")


class ChurnConfig(_Section):
    horizon_days: int = Field(
        90, gt=0, description="Churned = no completed purchase in the H days after the as-of date."
    )
    risk_bands: RiskBands = Field(default_factory=RiskBands)
    champion_tolerance: float = Field(
        0.0, ge=0, description="A challenger must beat the champion's holdout ROC-AUC by more than this."
    )
    training_snapshots: int = Field(
        4, gt=0, description="Feature dates of the training set: as_of - H, then every interval back."
    )
    snapshot_interval_days: int = Field(14, gt=0, description="Days between training snapshots.")
    candidates: list[ChurnCandidate] = Field(
        default_factory=lambda: list(CHURN_CANDIDATES),
        min_length=1,
        description="Model families compared by rolling time-based validation.",
    )
    refit_on_all: bool = Field(True, description="Refit the winner on all snapshots once the holdout has chosen it.")
    max_training_rows: int = Field(200_000, ge=0, description="A seeded random sample beyond this (0: no cap).")


class LifetimeValueConfig(_Section):
    value_horizon_days: int = Field(
        365, gt=0, description="Horizon of clv_12m: value of the purchases expected over these days, discounted."
    )
    discount_rate: float = Field(0.10, ge=0, lt=1, description="Yearly discount rate of future purchases.")
    champion_tolerance: float = Field(
        0.0, ge=0, description="A challenger must lower the champion's holdout error (per customer) by more than this."
    )


class ClusteringConfig(_Section):
    algorithms: list[ClusterAlgorithm] = Field(
        default_factory=lambda: list(CLUSTER_ALGORITHMS),
        min_length=1,
        description="Clustering families compared for the personas.",
    )
    k_min: int = Field(3, ge=2, description="Fewest personas tried.")
    k_max: int = Field(8, ge=2, description="Most personas tried.")
    sample_size: int = Field(
        20_000, gt=0, description="Candidates are compared on a sample; the winner scores everyone."
    )
    seed: int = Field(42, description="Random seed of sampling and fitting.")
    champion_tolerance: float = Field(0.0, ge=0, description="On silhouette, for the same users.")

    @model_validator(mode="after")
    def _range(self) -> ClusteringConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class MonitoringConfig(_Section):
    psi_warning: float = Field(0.2, gt=0, description="Feature drift against the champion's training data (PSI).")
    share_change_warning: float = Field(
        0.1, gt=0, description="Persona / risk-band share change since the previous scoring."
    )
    score_mean_change_warning: float = Field(0.1, gt=0, description="Change of the mean churn probability.")
    on_drift: Literal["warn", "fail"] = Field("warn", description="fail: drift warnings also fail the monitoring task.")


class SizeRatio(_Section):
    min: float = Field(0.5, gt=0, description="Warn when a segment shrinks below this share of its previous size.")
    max: float = Field(2.0, gt=0, description="Warn when a segment grows beyond this multiple of its previous size.")


class QualityConfig(_Section):
    expectations_dir: str | None = Field(
        None, description="Great Expectations suites (default: the ones installed with segflow)."
    )
    gx_dir: str = Field("gx", description="GX project: stored results and Data Docs.")
    segment_size_ratio: SizeRatio = Field(default_factory=SizeRatio)


class AirflowConfig(_Section):
    home: str | None = Field(None, description="AIRFLOW_HOME for segflow's commands (default: <root>/.airflow).")


class UiConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface the local UIs listen on.")
    airflow_port: int = Field(8080, gt=0, lt=65536)
    mlflow_port: int = Field(5000, gt=0, lt=65536)
    docs_port: int = Field(8081, gt=0, lt=65536, description="dbt docs at /, GX Data Docs at /gx/.")
    log_server_port: int = Field(8793, gt=0, lt=65536, description="The scheduler's task-log server.")
    trigger_log_server_port: int = Field(8794, gt=0, lt=65536, description="The triggerer's task-log server.")
    celery_workers: int = Field(
        2, ge=0, description="Celery workers started beside the scheduler when Airflow's executor is CeleryExecutor."
    )
    state_dir: str = Field(".ui", description="Process ids, logs and the generated Airflow login.")
    docs_dir: str = Field("docs/site", description="The static docs sites.")


class ServingConfig(_Section):
    url: str | None = Field(
        None,
        description="The serving store of `segflow serve`: `redis://host:port/db` (password via ${ENV}); "
        "unset: the local read-only snapshot in `snapshot_dir` (no service needed).",
    )
    snapshot_dir: str = Field("serving", description="Versioned read-only snapshots written after each scoring run.")
    keys_file: str = Field("serving/api_keys.sqlite", description="API keys (hashed) and their scopes.")
    key_prefix: str = Field("segflow", description="Prefix of every Redis key of the serving store.")
    grace_seconds: int = Field(
        300, ge=0, description="How long a replaced version stays readable (requests that started on it finish)."
    )
    host: str = Field("127.0.0.1", description="Interface `segflow serve` listens on.")
    port: int = Field(8082, gt=0, lt=65536)
    batch_max: int = Field(100, gt=0, le=10_000, description="Most ids in one POST /v1/profiles:batch.")
    page_size: int = Field(500, gt=0, le=10_000, description="Most members in one page of a segment's members.")
    rate_limit_per_minute: int = Field(
        60_000, gt=0, description="Requests per API key and minute (per server process), unless the key sets its own."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the API from (empty: no CORS headers)."
    )
    log_ids: bool = Field(
        False, description="Request logs show looked-up ids in clear (default: replaced by a short keyed hash)."
    )


class StreamConfig(_Section):
    url: str | None = Field(
        None,
        description="Redis of the real-time triggers (`segflow stream`): `redis://host:port/db` (password via ${ENV}); "
        "unset: no stream. Events, state, active triggers and the output streams live there.",
    )
    key_prefix: str = Field("segflow", description="Prefix of every Redis key of the stream consumer.")
    group: str = Field("segflow-triggers", description="The consumer group reading `<prefix>:events`.")
    consumer: str = Field(
        "consumer-1",
        description="This consumer's name in the group: a restarted consumer resumes its own pending events.",
    )
    allowed_lateness_seconds: float = Field(
        0.5,
        ge=0,
        le=3600,
        description="How long after an event's time it may still arrive: triggers fire this much after the event; "
        "a later event goes to the dead-letter stream (reason: late) and still reaches the batch path.",
    )
    clock: Literal["wall", "events"] = Field(
        "wall",
        description="`wall`: time moves with this machine's clock (live events); `events`: only with the events' "
        "times (replaying a past day).",
    )
    batch_size: int = Field(500, gt=0, le=100_000, description="Most events read from the stream at once.")
    max_pending: int = Field(
        50_000, gt=0, description="Events held while waiting for the watermark; reading pauses above it (backpressure)."
    )
    state_ttl_hours: int = Field(
        48, gt=0, description="A user's trigger state and active triggers expire after this long without events."
    )
    drop_dir: str | None = Field(
        None,
        description="Where the consumer writes the events it read as JSON-lines files for the batch path "
        "(default: `stream/` under the `events` files source; empty with no such source: not written).",
    )


class SegflowConfig(_Section):
    root: str = Field(".", description="Folder relative paths resolve against (itself relative to the file).")
    sources: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict,
        description="Where the data comes from, source by source (docs/extracts.md); null switches one off.",
    )
    warehouse: WarehouseConfig = Field(default_factory=WarehouseConfig)
    dbt: DbtConfig = Field(default_factory=DbtConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    writeback: WritebackConfig = Field(default_factory=WritebackConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    churn: ChurnConfig = Field(default_factory=ChurnConfig)
    lifetime_value: LifetimeValueConfig = Field(default_factory=LifetimeValueConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)


# Paths resolved against `root`; URLs whose relative SQLite paths are made absolute.
PATH_KEYS = [
    ("warehouse", "path"),
    ("ui", "state_dir"),
    ("ui", "docs_dir"),
    ("mlflow", "artifact_root"),
    ("writeback", "export_dir"),
    ("quality", "expectations_dir"),
    ("quality", "gx_dir"),
    ("airflow", "home"),
    ("serving", "snapshot_dir"),
    ("serving", "keys_file"),
    ("stream", "drop_dir"),
]
URL_KEYS = [("writeback", "crm_url"), ("mlflow", "tracking_uri"), ("serving", "url"), ("stream", "url")]


# --- key checks with suggestions ----------------------------------------------------------------------------


def _unknown(path: list[str], valid: list[str]) -> str:
    """`unknown key 'a.b' (did you mean 'a.c'?)`, or the valid keys when none is close."""
    parent = "".join(f"{p}." for p in path[:-1])
    match = difflib.get_close_matches(path[-1], valid, n=1, cutoff=0.6)
    hint = f"did you mean '{parent}{match[0]}'?" if match else f"valid keys here: {', '.join(sorted(valid))}"
    return f"unknown key '{parent}{path[-1]}' ({hint})"


def _source_kind(cfg: dict) -> str | None:
    if cfg.get("kind"):
        return str(cfg["kind"])
    if "path" in cfg:
        return "files"
    if "table" in cfg:
        return "sql"
    if "url" in cfg and str(cfg["url"]).startswith(("http://", "https://")):
        return "http"
    if "url" in cfg or "conn_id" in cfg:
        return "sql"
    return None


def check_source_keys(name: str, cfg: dict) -> None:
    """Refuse unknown keys of one source (and of its mapping), naming the closest valid key."""
    kind = _source_kind(cfg)
    allowed = set(SOURCE_COMMON_KEYS) | (
        set(SOURCE_KIND_KEYS[kind]) if kind in SOURCE_KIND_KEYS else set().union(*SOURCE_KIND_KEYS.values())
    )
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                _unknown(["sources", name, str(key)], sorted(allowed))
                + (f" for a {kind} source" if kind in SOURCE_KIND_KEYS else "")
            )
    mapping = cfg.get("mapping")
    if isinstance(mapping, dict):
        for key in mapping:
            if key not in MAPPING_KEYS:
                raise ConfigError(_unknown(["sources", name, "mapping", str(key)], sorted(MAPPING_KEYS)))


def _model_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def check_keys(data: dict, model: type[BaseModel] = SegflowConfig, path: list[str] | None = None) -> None:
    """Every key of `data` exists in the schema (free-form sections, like a source's options, stop the walk)."""
    path = path or []
    for key, value in data.items():
        if key not in model.model_fields:
            raise ConfigError(_unknown([*path, str(key)], _model_keys(model)))
        if model is SegflowConfig and key == "sources" and isinstance(value, dict):
            for name, cfg in value.items():
                if isinstance(cfg, dict):
                    check_source_keys(str(name), cfg)
            continue
        sub = _section_model(model, key)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, [*path, str(key)])


def check_env_key(name: str) -> list[str]:
    """The key path of a SEGFLOW__ variable, refused when a section or key does not exist."""
    keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
    if not keys:
        raise ConfigError(f"environment variable {name}: no key after {ENV_PREFIX}")
    model: type[BaseModel] | None = SegflowConfig
    for depth, key in enumerate(keys):
        if model is None:  # inside a free-form section (a source's options, a mapping)
            break
        if key not in model.model_fields:
            raise ConfigError(f"environment variable {name}: " + _unknown(keys[: depth + 1], _model_keys(model)))
        if model is SegflowConfig and key == "sources":
            if len(keys) > 3:
                break
            if len(keys) == 3 and keys[2] not in SOURCE_COMMON_KEYS | set().union(*SOURCE_KIND_KEYS.values()):
                allowed = sorted(SOURCE_COMMON_KEYS | set().union(*SOURCE_KIND_KEYS.values()))
                raise ConfigError(f"environment variable {name}: " + _unknown(keys, allowed))
            break
        model = _section_model(model, key)
    return keys


def _describe_validation(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    value = first.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {str(value)[:60]!r})"
    more = f"; and {error.error_count() - 1} more problem(s)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{shown}{more}"


# --- loading -------------------------------------------------------------------------------------------------


def _coerce(value: str) -> Any:
    """Env values are strings; parse them as YAML scalars so numbers and booleans keep their type."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_env_overrides(data: dict, environ: dict[str, str]) -> dict:
    """SEGFLOW__SECTION__KEY=value onto `data`, each variable checked against the schema first."""
    data = copy.deepcopy(data)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = check_env_key(name)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
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
            raise ConfigError(f"the configuration references ${{{name}}} but it is not set in the environment")
        return environ[name]

    return _ENV_REF.sub(repl, value)


def resolve_sqlite_url(url: str, root: Path) -> str:
    """Make relative SQLite paths absolute so every process (scheduler, workers, tests) agrees."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy reads
        return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)


def resolve_warehouse_url(warehouse: dict[str, Any], root: Path, environ: dict[str, str]) -> None:
    """Expand ${ENV} in `warehouse.url` and make a DuckDB URL's path absolute; a DuckDB URL sets `warehouse.path`
    too, so `path` and `url` never name different files."""
    if not warehouse.get("url"):
        return
    url = expand_env_refs(str(warehouse["url"]), environ)
    if warehouse_scheme(url) == "duckdb":
        path = duckdb_file(url)  # relative to root unless absolute
        if not path or path == ":memory:":
            raise ConfigError("warehouse.url: a DuckDB warehouse needs a file (duckdb:///path/to/file.duckdb)")
        warehouse["path"] = str((root / path).resolve())
        url = f"duckdb:///{warehouse['path']}"
    warehouse["url"] = url


def find_config_file(
    explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    env: Mapping[str, str] = os.environ if environ is None else environ
    named = [(explicit, "--config"), (env.get("SEGFLOW_CONFIG"), "SEGFLOW_CONFIG")]
    for candidate, origin in named:
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"config file not found: {candidate} (from {origin})")
            return path.resolve()
    for candidate in (Path.cwd() / "segflow.yml", REPO_ROOT / "segflow.yml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's mapping; invalid YAML is one line naming the file, line and column."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


@dataclass(frozen=True)
class Settings:
    """Resolved configuration: `model` is typed; `raw` is the same as a plain dict (every key present)."""

    raw: dict[str, Any]
    root: Path
    config_file: Path | None = None
    model: SegflowConfig = field(default_factory=SegflowConfig, compare=False, repr=False)

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.raw
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return default if node is None else node

    @property
    def warehouse_url(self) -> str:
        """The warehouse as a URL (segflow.core.engines.connect_engine); the DuckDB file when none is set."""
        return self.raw["warehouse"]["url"] or f"duckdb:///{self.raw['warehouse']['path']}"

    @property
    def warehouse_engine(self) -> str:
        """`duckdb` or `postgresql`: the scheme of `warehouse_url`."""
        return warehouse_scheme(self.warehouse_url)

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB warehouse file. Raises for another engine: a task that only speaks DuckDB must not quietly
        read or write a local file while the warehouse is elsewhere."""
        if self.warehouse_engine != "duckdb":
            raise UnsupportedWarehouse(
                f"warehouse.url is a {self.warehouse_engine} warehouse, and this task still reads and writes the "
                "warehouse file directly (docs/production.md lists what runs on other engines)"
            )
        return Path(self.raw["warehouse"]["path"])

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.raw["mlflow"]["tracking_uri"]

    @property
    def horizon_days(self) -> int:
        return self.model.churn.horizon_days


def _validate(data: dict, origin: str) -> SegflowConfig:
    try:
        return SegflowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe_validation(exc)}") from None


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, check and resolve the configuration. Raises ConfigError (one line) on any problem."""
    environ = dict(os.environ if environ is None else environ)
    config_file = find_config_file(path, environ)
    data: dict[str, Any] = {}
    base_dir = Path.cwd() if config_file is None else config_file.parent
    origin = "defaults" if config_file is None else str(config_file)
    if config_file is not None:
        data = read_config_file(config_file)
        try:
            check_keys(data)
        except ConfigError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
        _validate(data, origin)
    data = apply_env_overrides(data, environ)
    check_keys(data)
    resolved = _validate(data, f"{origin} with SEGFLOW__ overrides").model_dump()

    root = (base_dir / expand_env_refs(str(resolved.get("root") or "."), environ)).resolve()
    resolved["root"] = str(root)
    for section, key in PATH_KEYS:
        if resolved[section].get(key):
            resolved[section][key] = str((root / expand_env_refs(str(resolved[section][key]), environ)).resolve())
    for name, source in (resolved.get("sources") or {}).items():
        if source is None:
            continue
        if not isinstance(source, dict):
            raise ConfigError(f"{origin}: sources.{name}: expected a mapping of options, got {source!r:.60}")
        # Source paths are resolved like every path; URLs get ${ENV} expansion and absolute SQLite paths.
        if source.get("path"):
            source["path"] = str((root / expand_env_refs(str(source["path"]), environ)).resolve())
        if source.get("url"):
            source["url"] = resolve_sqlite_url(expand_env_refs(str(source["url"]), environ), root)
    for section, key in URL_KEYS:
        if resolved[section].get(key):
            resolved[section][key] = resolve_sqlite_url(expand_env_refs(str(resolved[section][key]), environ), root)
    resolve_warehouse_url(resolved["warehouse"], root, environ)
    model = SegflowConfig.model_validate(resolved)
    return Settings(raw=model.model_dump(), root=root, config_file=config_file, model=model)


def stores_under(root: Path, writeback_crm_url: str) -> dict[str, str]:
    """Environment overrides that put every store a run writes under `root` (warehouse, MLflow, exports, GX,
    Airflow home, serving snapshot, dbt's target and logs) - for runs isolated from the configured ones (bench, backtest)."""
    return {
        "SEGFLOW__WAREHOUSE__PATH": str(root / "warehouse.duckdb"),
        "SEGFLOW__MLFLOW__TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SEGFLOW__MLFLOW__ARTIFACT_ROOT": str(root / "mlartifacts"),
        "SEGFLOW__WRITEBACK__CRM_URL": writeback_crm_url,
        "SEGFLOW__WRITEBACK__EXPORT_DIR": str(root / "exports"),
        "SEGFLOW__AIRFLOW__HOME": str(root / "airflow"),
        "SEGFLOW__QUALITY__GX_DIR": str(root / "gx"),
        "SEGFLOW__SERVING__URL": "",  # the local snapshot: an isolated run must not switch a shared serving store
        "SEGFLOW__SERVING__SNAPSHOT_DIR": str(root / "serving"),
        "SEGFLOW__SERVING__KEYS_FILE": str(root / "serving" / "api_keys.sqlite"),
        "SEGFLOW__STREAM__URL": "",
        "DBT_TARGET_PATH": str(root / "dbt_target"),
        "DBT_LOG_PATH": str(root / "dbt_logs"),
    }


def schema_reference() -> str:
    """Markdown reference of every key with its type, default and meaning (docs/configuration.md)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = _section_model(model, name)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
                continue
            default = info.get_default(call_default_factory=True)
            shown = "see below" if name == "sources" else f"`{default!r}`" if default is not None else "-"
            annotation = str(info.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            annotation = annotation.replace(" | ", " or ").replace("|", " or ")
            lines.append(f"| `{prefix}{name}` | {annotation} | {shown} | {info.description or ''} |")

    walk(SegflowConfig, "")
    return "\n".join(["| key | type | default | meaning |", "| --- | --- | --- | --- |", *lines])
