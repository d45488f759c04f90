"""MLflow: tracking setup, registration, and the champion/challenger decision (aliases, not stages)."""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from segflow.core.config import REPO_ROOT, Settings

log = logging.getLogger(__name__)

CLUSTER_MODEL = "user_segments_clusterer"
CHURN_MODEL = "user_churn"
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


@dataclass
class Decision:
    model_name: str
    version: str
    alias: str
    reason: str
    new_metric: float
    champion_metric: float | None
    champion_version: str | None = None


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


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
) -> Decision:
    """Promote `version` to champion if it beats the champion's metric on the same holdout by more than
    `tolerance`, or if there is no champion; otherwise mark it challenger. The decision is tagged on the version."""
    if champion_metric is None:
        alias, reason = CHAMPION, "no current champion"
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
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion_decision", alias)
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


def load_champion(settings: Settings, name: str):
    """Return (model, model_version) for `models:/name@champion`."""
    mlflow = configure_mlflow(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    version = current_champion(client, name)
    if version is None:
        raise LookupError(
            f"registered model '{name}' has no '{CHAMPION}' alias yet: run the training DAG (segflow_train) first"
        )
    return mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}"), version
