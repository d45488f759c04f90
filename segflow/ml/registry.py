"""MLflow: tracking setup, registration, and the champion/challenger decision (aliases, not stages).

Which model scores a date is decided as of that date: every version is tagged with the date of the data it was
trained on (`as_of`) and with its promotion decision; the champion as of D is the latest promoted version
trained on data up to D. The `@champion` alias follows the champion of the latest training date, so a backfill
that trains a model for a past date never takes it away from the present (and the present's model never
scores the past: it learnt from outcomes that were unknown then)."""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from segflow.core.config import REPO_ROOT, Settings

log = logging.getLogger(__name__)

CLUSTER_MODEL = "user_segments_clusterer"
CHURN_MODEL = "user_churn"
CLV_MODEL = "user_lifetime_value"
MODELS = (CLUSTER_MODEL, CHURN_MODEL, CLV_MODEL)
CHAMPION, CHALLENGER = "champion", "challenger"


def configure_mlflow(settings: Settings):
    """Point MLflow at the configured store; create the experiment with the configured artifact root."""
    import mlflow

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = settings.get("mlflow", "experiment", default="segflow")
    if mlflow.get_experiment_by_name(name) is None:
        artifact_root = settings.get("mlflow", "artifact_root")
        location = (
            Path(artifact_root).resolve().as_uri()
            if artifact_root and "://" not in str(artifact_root)
            else artifact_root
        )
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    # Models are loaded only from this project's own registry, which we trust.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    return mlflow


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# What loading a registered model imports, pinned to the versions that trained it. Declared rather than inferred:
# MLflow's inference loads the model in a subprocess (seconds per model) and picked up pytest from test runs.
SKLEARN_MODEL_PACKAGES = ("segflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
PYFUNC_MODEL_PACKAGES = ("segflow", "cloudpickle", "numpy", "pandas", "scipy")


def model_requirements(packages: tuple[str, ...]) -> list[str]:
    """Pinned pip requirements of a logged model: `package==installed version` for each of `packages`.

    Args:
        packages: distribution names (as pip knows them) the model needs to load and predict.

    Returns:
        One requirement line per package; mlflow itself is added by MLflow.
    """
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]


@dataclass
class Decision:
    model_name: str
    version: str
    alias: str
    reason: str
    new_metric: float
    champion_metric: float | None
    champion_version: str | None = None


def alias_holder(client, name: str, alias: str):
    """The version `alias` points at; None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def current_champion(client, name: str):
    return alias_holder(client, name, CHAMPION)


def trained_as_of(version) -> date | None:
    try:
        return date.fromisoformat(str(version.tags.get("as_of", ""))[:10])
    except ValueError:
        return None


def champion_as_of(client, name: str, as_of: date):
    """The version that was champion on `as_of`: the `@champion` alias when no version was trained on later data
    (a rollback in the UI counts), otherwise the latest promoted version trained on data up to that date (ties: the
    later decision). None when no model of `name` had been promoted by then."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    # The present (no version was trained on later data): `@champion` itself, so that pointing the alias at an
    # earlier version in the MLflow UI rolls scoring back. Past dates follow the decisions tagged at training.
    if versions and all((trained_as_of(v) or date.max) <= as_of for v in versions):
        holder = current_champion(client, name)
        if holder is not None:
            return holder
    promoted = [
        v for v in versions if v.tags.get("promotion_decision") == CHAMPION and (trained_as_of(v) or date.max) <= as_of
    ]
    return max(promoted, key=lambda v: (trained_as_of(v), int(v.version)), default=None)


def _move_alias(client, name: str, alias: str, version: str, as_of: date | None) -> bool:
    """Point `alias` at `version` unless it holds a version trained on later data (a backfill's model never
    replaces the present's). Returns whether it moved."""
    if as_of is not None:
        holder = alias_holder(client, name, alias)
        held = trained_as_of(holder) if holder is not None else None
        if held is not None and held > as_of:
            return False
    client.set_registered_model_alias(name, alias, version)
    return True


def decide_alias(
    client,
    name: str,
    version: str,
    new_metric: float,
    champion_metric: float | None,
    tolerance: float,
    higher_is_better: bool = True,
    metric_name: str = "metric",
    champion_version: str | None = None,
    as_of: date | None = None,
) -> Decision:
    """Promote `version` to champion if it beats the champion's metric on the same holdout by more than
    `tolerance`, or if there is no champion; otherwise mark it challenger. The decision is tagged on the version
    (what champion_as_of reads); the alias moves only if no version of later data holds it."""
    if champion_metric is None:
        alias, reason = (
            CHAMPION,
            "no current champion" if as_of is None else f"no champion trained on data up to {as_of}",
        )
    else:
        gain = (new_metric - champion_metric) if higher_is_better else (champion_metric - new_metric)
        if gain > tolerance:
            alias, reason = (
                CHAMPION,
                f"{metric_name} {new_metric:.4f} beats champion{_v(champion_version)} {champion_metric:.4f} by {gain:.4f} > tolerance {tolerance}",
            )
        else:
            alias, reason = (
                CHALLENGER,
                f"{metric_name} {new_metric:.4f} does not beat champion{_v(champion_version)} {champion_metric:.4f} by more than tolerance {tolerance}",
            )
    client.set_model_version_tag(name, version, "promotion_decision", alias)
    if not _move_alias(client, name, alias, version, as_of):
        reason += f"; @{alias} stays on the model of a later date (this one serves {as_of} until then)"
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    log.info("%s v%s -> %s: %s", name, version, alias, reason)
    return Decision(
        name,
        str(version),
        alias,
        reason,
        new_metric,
        champion_metric,
        None if champion_version is None else str(champion_version),
    )


def _v(version) -> str:
    return "" if version is None else f" v{version}"


def load_champion(settings: Settings, name: str, as_of: date | None = None):
    """Return (model, model_version): the champion as of `as_of` (the current `@champion` without a date)."""
    mlflow = configure_mlflow(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    version = current_champion(client, name) if as_of is None else champion_as_of(client, name, as_of)
    if version is None:
        when = "" if as_of is None else f" trained on data up to {as_of}"
        raise LookupError(
            f"registered model '{name}' has no champion{when} yet: run the training DAG (segflow_train) for that date"
        )
    return load_version(mlflow, name, version.version), version


def load_version(mlflow, name: str, version) -> object:
    """Version `version` of registered model `name`: the scikit-learn estimator, or for the lifetime-value model
    (an MLflow pyfunc) the segflow.ml.clv.LifetimeValue inside it."""
    uri = f"models:/{name}/{version}"
    if name == CLV_MODEL:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().model
    return mlflow.sklearn.load_model(uri)


def has_champions(settings: Settings, as_of: date) -> bool:
    """Whether every model has a champion trained on data up to `as_of`."""
    configure_mlflow(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    return all(champion_as_of(client, name, as_of) is not None for name in MODELS)
