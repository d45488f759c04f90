"""Retraining: build point-in-time training data with dbt, fit both models, log them to MLflow,
register them and decide champion/challenger on the same holdout."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from ml import plots
from ml.churn import evaluate, train_churn
from ml.clustering import CLUSTER_COLUMNS, silhouette_of, train_clustering
from ml.features import MODEL_FEATURES, prepare, read_features, read_training_set
from ml.registry import CHURN_MODEL, CLUSTER_MODEL, configure_mlflow, current_champion, decide_alias, git_commit
from segflow.config import Settings
from segflow.dbt import dbt_vars, run_dbt
from segflow.warehouse import connect

log = logging.getLogger(__name__)


@dataclass
class TrainingSummary:
    as_of: str
    clusterer: dict
    churn: dict


def ensure_feature_partition(settings: Settings, as_of: date) -> None:
    """Build marts.user_features_history for `as_of` (from data known then) unless it exists already."""
    with connect(settings.warehouse_path, read_only=True) as con:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema='marts' AND table_name='user_features_history'"
        ).fetchone()[0] and con.execute(
            "SELECT count(*) FROM marts.user_features_history WHERE as_of = ?::DATE", [str(as_of)]).fetchone()[0]
    if not exists:
        log.info("building feature partition as of %s", as_of)
        # Past dates are built in their own audit schema so they never race the daily build's candidates.
        run_dbt(settings, ["run", "--select", "int_users_featurised", "audit_user_features", "user_features_history"],
                vars=dbt_vars(as_of.isoformat(), settings, audit_schema="audit_training"))


def build_training_data(settings: Settings, as_of: date) -> pd.DataFrame:
    feature_date = as_of - timedelta(days=settings.horizon_days)
    ensure_feature_partition(settings, as_of)
    ensure_feature_partition(settings, feature_date)
    run_dbt(settings, ["run", "--select", "churn_training_set"],
            vars=dbt_vars(as_of.isoformat(), settings, feature_as_of=feature_date.isoformat()))
    return read_training_set(settings.warehouse_path)


def _log_figure(mlflow, fig, name: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, name)
    plt.close(fig)


def _register(mlflow, client, model, name: str, example: pd.DataFrame, tags: dict) -> str:
    from mlflow.models import infer_signature

    import skops.io

    output = model.predict_proba(example)[:, 1] if hasattr(model, "predict_proba") else model.predict(example)
    # skops refuses types it does not know; these are the types of our own freshly fitted pipeline.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    info = mlflow.sklearn.log_model(model, name=name, registered_model_name=name, input_example=example,
                                    signature=infer_signature(example, output), skops_trusted_types=trusted)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def train_models(settings: Settings, as_of: date) -> TrainingSummary:
    mlflow = configure_mlflow(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    tolerance = float(settings.get("churn", "champion_tolerance", default=0.0))
    seed = int(settings.get("clustering", "seed", default=42))
    training = build_training_data(settings, as_of)
    features = read_features(settings.warehouse_path, as_of)
    lineage = {"as_of": as_of.isoformat(), "git_commit": git_commit(),
               "feature_window_start": (as_of - timedelta(days=settings.horizon_days)).isoformat(),
               "feature_window_end": as_of.isoformat(), "horizon_days": settings.horizon_days}

    # Personas.
    cfg = settings.raw["clustering"]
    with mlflow.start_run(run_name=f"clusterer {as_of}", tags={**lineage, "model": CLUSTER_MODEL}):
        result = train_clustering(features, int(cfg["k_min"]), int(cfg["k_max"]), int(cfg["sample_size"]), seed)
        mlflow.log_params({"algorithm": "kmeans", "k_min": cfg["k_min"], "k_max": cfg["k_max"], "sample_size": cfg["sample_size"],
                           "features": ",".join(CLUSTER_COLUMNS)})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
        mlflow.log_table(result.selection, "k_selection.json")
        mlflow.log_table(result.profile, "cluster_profile.json")
        _log_figure(mlflow, plots.k_selection(result.selection, result.k), "k_selection.png")
        _log_figure(mlflow, plots.cluster_profile(result.profile), "cluster_profile.png")
        X = prepare(features, CLUSTER_COLUMNS)
        personas = {str(r.cluster_id): r.persona for r in result.profile.itertuples()}
        version = _register(mlflow, client, result.model, CLUSTER_MODEL, X.head(5),
                            {**lineage, "personas": json.dumps(personas), "silhouette": result.metrics["silhouette"]})
        # Compare with the champion on the same users: each model's silhouette on today's features.
        champion = current_champion(client, CLUSTER_MODEL)
        champion_metric = None
        if champion is not None:
            champ_model = mlflow.sklearn.load_model(f"models:/{CLUSTER_MODEL}/{champion.version}")
            champion_metric = silhouette_of(champ_model, X, seed)
        new_metric = silhouette_of(result.model, X, seed)
        decision = decide_alias(client, CLUSTER_MODEL, version, new_metric, champion_metric, tolerance, metric_name="silhouette")
        mlflow.log_dict(decision.__dict__, "promotion_decision.json")
        cluster_summary = {"version": version, "alias": decision.alias, "reason": decision.reason, **result.metrics,
                           "personas": personas}

    # Churn.
    with mlflow.start_run(run_name=f"churn {as_of}", tags={**lineage, "model": CHURN_MODEL}):
        churn = train_churn(training, seed=seed)
        mlflow.log_params({"selected": churn.kind, "holdout_share": 0.25, "calibration": "isotonic",
                           "training_rows": len(training), "feature_as_of": lineage["feature_window_start"]})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in churn.metrics.items()})
        for kind, metrics in churn.candidates.items():
            mlflow.log_metrics({f"{kind}_{k}": v for k, v in metrics.items()})
        y = churn.holdout["churned"].to_numpy()
        _log_figure(mlflow, plots.roc(y, churn.holdout_pred), "roc.png")
        _log_figure(mlflow, plots.calibration(y, churn.holdout_pred), "calibration.png")
        _log_figure(mlflow, plots.confusion(y, churn.holdout_pred), "confusion_matrix.png")
        _log_figure(mlflow, plots.importance(churn.importance), "feature_importance.png")
        mlflow.log_table(churn.importance, "feature_importance.json")
        X_hold = churn.holdout[MODEL_FEATURES]
        version = _register(mlflow, client, churn.model, CHURN_MODEL, X_hold.head(5),
                            {**lineage, "algorithm": churn.kind, "holdout_roc_auc": churn.metrics["roc_auc"]})
        champion = current_champion(client, CHURN_MODEL)
        champion_metric = None
        if champion is not None and champion.version != version:
            champ_model = mlflow.sklearn.load_model(f"models:/{CHURN_MODEL}/{champion.version}")
            champion_metric = evaluate(y, champ_model.predict_proba(X_hold)[:, 1])["roc_auc"]
        decision = decide_alias(client, CHURN_MODEL, version, churn.metrics["roc_auc"], champion_metric, tolerance,
                                metric_name="holdout ROC-AUC")
        mlflow.log_dict(decision.__dict__, "promotion_decision.json")
        churn_summary = {"version": version, "alias": decision.alias, "reason": decision.reason, "algorithm": churn.kind,
                         **churn.metrics}
    return TrainingSummary(as_of.isoformat(), cluster_summary, churn_summary)



