"""Retraining: build point-in-time training data with dbt, fit the models (personas, churn, lifetime value), log
them to MLflow, register them and decide champion/challenger on the same holdout - against the champion as of
the training date, so a backfill's training never competes with (or replaces) a model of later data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from segflow.core.config import Settings
from segflow.core.dbt import dbt_vars, run_dbt
from segflow.core.engines import connect_engine, scalar
from segflow.ml import plots
from segflow.ml.churn import CANDIDATES, evaluate, model_features, train_churn
from segflow.ml.clustering import ALGORITHMS, CLUSTER_COLUMNS, silhouette_of, train_clustering
from segflow.ml.clv import LifetimeValue, clv_inputs
from segflow.ml.features import MODEL_FEATURES, prepare, read_features, read_training_set, synthetic_example
from segflow.ml.monitoring import save_reference
from segflow.ml.registry import (
    CHURN_MODEL,
    CLUSTER_MODEL,
    CLV_MODEL,
    PYFUNC_MODEL_PACKAGES,
    SKLEARN_MODEL_PACKAGES,
    champion_as_of,
    configure_mlflow,
    decide_alias,
    git_commit,
    load_version,
    model_requirements,
    trained_as_of,
)

log = logging.getLogger(__name__)


def metric_to_beat(champion, as_of: date, horizon: int, on_holdout: Callable[[], float], recorded: str) -> float:
    """The champion's metric to beat. On the challenger's holdout (outcomes over the H days to `as_of`) when the
    champion was trained before that window opened; a champion trained later has learnt from those outcomes and
    would look better than it is, so its own holdout metric, recorded when it was trained, is used instead."""
    trained = trained_as_of(champion)
    if trained is not None and trained > as_of - timedelta(days=horizon) and champion.tags.get(recorded):
        return float(champion.tags[recorded])
    return on_holdout()


@dataclass
class TrainingSummary:
    as_of: str
    clusterer: dict
    churn: dict
    lifetime_value: dict


# What builds marts.user_features_history for one as-of date: the feature models, their audit candidate, the store,
# the view - and the published view over it: PostgreSQL drops a replaced view's dependants (dbt-postgres replaces a
# view and drops the old one CASCADE), so marts.user_features would vanish if it were not rebuilt with it.
FEATURE_PARTITION_MODELS = (
    "tag:features",
    "audit_user_features",
    "store_user_features_history",
    "user_features_history",
    "user_features",
)


def ensure_feature_partition(settings: Settings, as_of: date) -> None:
    """Build marts.user_features_history for `as_of` (from data known then) unless it exists already."""
    with connect_engine(settings.warehouse_url) as engine:
        exists = scalar(
            engine,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema='marts' AND table_name='user_features_history'",
        ) and scalar(engine, "SELECT count(*) FROM marts.user_features_history WHERE as_of = ?", [as_of])
    if not exists:
        log.info("building feature partition as of %s", as_of)
        # Past dates are built in their own audit schema so they never race the daily build's candidates.
        run_dbt(
            settings,
            ["run", "--select", *FEATURE_PARTITION_MODELS],
            vars=dbt_vars(as_of.isoformat(), settings, audit_schema="audit_training"),
        )


def snapshot_dates(settings: Settings, as_of: date) -> list[date]:
    """Feature dates of the churn training set, oldest first: the latest is as_of - H (its label window ends on
    the as-of date, the holdout), then every `snapshot_interval_days` back, `training_snapshots` in all."""
    count = int(settings.get("churn", "training_snapshots", default=3))
    interval = int(settings.get("churn", "snapshot_interval_days", default=21))
    latest = as_of - timedelta(days=settings.horizon_days)
    return sorted(latest - timedelta(days=interval * i) for i in range(max(1, count)))


def build_training_data(settings: Settings, as_of: date, dates: list[date]) -> pd.DataFrame:
    """ml.churn_training_set over the snapshot `dates`, building any missing feature partition first."""
    for day in [as_of, *dates]:
        ensure_feature_partition(settings, day)
    # The labels come from int_orders_attributed as of the as-of date: inlined on DuckDB, a table on PostgreSQL,
    # built here (with what it reads) in the training audit schema.
    run_dbt(
        settings,
        ["run", "--select", "+int_orders_attributed,tag:features", "churn_training_set"],
        vars=dbt_vars(
            as_of.isoformat(), settings, audit_schema="audit_training", feature_dates=[d.isoformat() for d in dates]
        ),
    )
    return read_training_set(settings.warehouse_url)


def _log_figure(mlflow, fig, name: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, name)
    plt.close(fig)


def _register(mlflow, client, model, name: str, example: pd.DataFrame, tags: dict) -> str:
    import skops.io
    from mlflow.models import infer_signature

    output = model.predict_proba(example)[:, 1] if hasattr(model, "predict_proba") else model.predict(example)
    # skops refuses types it does not know; these are the types of our own freshly fitted pipeline.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        registered_model_name=name,
        input_example=example,
        signature=infer_signature(example, output),
        skops_trusted_types=trusted,
        pip_requirements=model_requirements(SKLEARN_MODEL_PACKAGES),
    )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def train_models(settings: Settings, as_of: date) -> TrainingSummary:
    mlflow = configure_mlflow(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    seed = int(settings.get("clustering", "seed", default=42))
    snapshots = snapshot_dates(settings, as_of)
    training = build_training_data(settings, as_of, snapshots)
    features = read_features(settings.warehouse_url, as_of)
    # Tags are text: a tracking server's REST API refuses other values (a local store would convert them).
    lineage = {"as_of": as_of.isoformat(), "git_commit": git_commit(), "horizon_days": str(settings.horizon_days)}
    cluster_summary = train_clusterer(settings, mlflow, client, features, as_of, lineage, seed)
    churn_summary = train_churn_model(settings, mlflow, client, training, snapshots, as_of, lineage, seed)
    calibration = read_features(settings.warehouse_url, snapshots[-1])  # as of D - H: the holdout's start
    clv_summary = train_lifetime_value(settings, mlflow, client, features, calibration, as_of, lineage)
    return TrainingSummary(as_of.isoformat(), cluster_summary, churn_summary, clv_summary)


def train_clusterer(
    settings: Settings, mlflow, client, features: pd.DataFrame, as_of: date, lineage: dict, seed: int
) -> dict:
    cfg = settings.raw["clustering"]
    tolerance = float(cfg.get("champion_tolerance", 0.0))
    algorithms = tuple(cfg.get("algorithms") or ALGORITHMS)
    tags = {
        **lineage,
        "model": CLUSTER_MODEL,
        "data_window_start": as_of.isoformat(),
        "data_window_end": as_of.isoformat(),
    }
    with mlflow.start_run(run_name=f"clusterer {as_of}", tags=tags):
        result = train_clustering(
            features, int(cfg["k_min"]), int(cfg["k_max"]), int(cfg["sample_size"]), seed, algorithms
        )
        mlflow.log_params(
            {
                "algorithm": result.algorithm,
                "candidates": ",".join(algorithms),
                "k_min": cfg["k_min"],
                "k_max": cfg["k_max"],
                "sample_size": cfg["sample_size"],
                "features": ",".join(CLUSTER_COLUMNS),
                "seed": seed,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
        mlflow.log_table(result.selection, "k_selection.json")
        mlflow.log_table(result.profile, "cluster_profile.json")
        chosen = result.selection[result.selection["chosen"]].iloc[0]
        _log_figure(mlflow, plots.k_selection(result.selection, chosen), "k_selection.png")
        _log_figure(mlflow, plots.cluster_profile(result.profile), "cluster_profile.png")
        X = prepare(features, CLUSTER_COLUMNS)
        personas = {str(r.cluster_id): r.persona for r in result.profile.itertuples()}
        descriptions = {str(r.cluster_id): r.description for r in result.profile.itertuples()}
        version = _register(
            mlflow,
            client,
            result.model,
            CLUSTER_MODEL,
            synthetic_example(X),
            {
                **tags,
                "algorithm": result.algorithm,
                "personas": json.dumps(personas),
                "persona_descriptions": json.dumps(descriptions),
                "silhouette": result.metrics["silhouette"],
            },
        )
        # Champion and challenger are compared on the same users: each one's silhouette on today's features.
        champion = champion_as_of(client, CLUSTER_MODEL, as_of)
        champion_metric = None
        if champion is not None and str(champion.version) != version:
            champ_model = load_version(mlflow, CLUSTER_MODEL, champion.version)
            champion_metric = silhouette_of(champ_model, X, seed)
        new_metric = silhouette_of(result.model, X, seed)
        decision = decide_alias(
            client,
            CLUSTER_MODEL,
            version,
            new_metric,
            champion_metric,
            tolerance,
            metric_name="silhouette",
            champion_version=getattr(champion, "version", None),
            as_of=as_of,
        )
        mlflow.log_dict(decision.__dict__, "promotion_decision.json")
        mlflow.set_tag("promotion_decision", decision.alias)
        save_reference(settings, CLUSTER_MODEL, version, features)
    return {
        "version": version,
        "alias": decision.alias,
        "reason": decision.reason,
        "algorithm": result.algorithm,
        **result.metrics,
        "personas": personas,
    }


def cap_rows(training: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of `limit` rows when there are more (0: no limit). Every snapshot keeps its share,
    so the time-based holdout still holds the latest one."""
    if not limit or len(training) <= limit:
        return training
    log.info("churn training: a random sample of %d of %d rows (churn.max_training_rows)", limit, len(training))
    return training.sample(n=limit, random_state=seed).sort_index()


def train_churn_model(
    settings: Settings,
    mlflow,
    client,
    training: pd.DataFrame,
    snapshots: list[date],
    as_of: date,
    lineage: dict,
    seed: int,
) -> dict:
    cfg = settings.raw.get("churn", {})
    tolerance = float(cfg.get("champion_tolerance", 0.0))
    candidates = tuple(cfg.get("candidates") or CANDIDATES)
    tags = {
        **lineage,
        "model": CHURN_MODEL,
        "data_window_start": snapshots[0].isoformat(),
        "data_window_end": as_of.isoformat(),
        "feature_snapshots": ",".join(d.isoformat() for d in snapshots),
    }
    available = len(training)
    training = cap_rows(training, int(cfg.get("max_training_rows") or 0), seed)
    with mlflow.start_run(run_name=f"churn {as_of}", tags=tags):
        churn = train_churn(
            training, seed=seed, candidates=candidates, refit_on_all=bool(cfg.get("refit_on_all", True))
        )
        mlflow.log_params(
            {
                "selected": churn.kind,
                "candidates": ",".join(candidates),
                "holdout": churn.split,
                "calibration": "sigmoid (boosting); none needed (logistic regression)",
                "training_rows": len(training),
                "training_rows_available": available,
                **churn.extra,
                "features": ",".join(MODEL_FEATURES),
            }
        )
        mlflow.log_metrics({f"holdout_{k}": v for k, v in churn.metrics.items()})
        for kind, metrics in {**churn.candidates, **{f"baseline_{k}": v for k, v in churn.baselines.items()}}.items():
            mlflow.log_metrics({f"{kind}_{k}": v for k, v in metrics.items() if v == v})  # NaN (no Brier) left out
        y = churn.holdout["churned"].to_numpy()
        _log_figure(mlflow, plots.roc(y, churn.holdout_pred), "roc.png")
        _log_figure(mlflow, plots.calibration(y, churn.holdout_pred), "calibration.png")
        _log_figure(mlflow, plots.confusion(y, churn.holdout_pred), "confusion_matrix.png")
        _log_figure(mlflow, plots.importance(churn.importance), "feature_importance.png")
        mlflow.log_table(churn.importance, "feature_importance.json")
        X_hold = churn.holdout[MODEL_FEATURES]
        version = _register(
            mlflow,
            client,
            churn.model,
            CHURN_MODEL,
            synthetic_example(X_hold),
            {**tags, "algorithm": churn.kind, "holdout_roc_auc": churn.metrics["roc_auc"]},
        )
        champion = champion_as_of(client, CHURN_MODEL, as_of)
        to_beat = None
        if champion is not None and str(champion.version) != version:

            def churn_on_holdout() -> float:
                champ_model = load_version(mlflow, CHURN_MODEL, champion.version)
                champ_input = prepare(churn.holdout, model_features(champ_model))
                return evaluate(y, champ_model.predict_proba(champ_input)[:, 1])["roc_auc"]

            to_beat = metric_to_beat(champion, as_of, settings.horizon_days, churn_on_holdout, "holdout_roc_auc")
        decision = decide_alias(
            client,
            CHURN_MODEL,
            version,
            churn.metrics["roc_auc"],
            to_beat,
            tolerance,
            metric_name="holdout ROC-AUC",
            champion_version=getattr(champion, "version", None),
            as_of=as_of,
        )
        mlflow.log_dict(decision.__dict__, "promotion_decision.json")
        mlflow.set_tag("promotion_decision", decision.alias)
        save_reference(settings, CHURN_MODEL, version, training)
    return {
        "version": version,
        "alias": decision.alias,
        "reason": decision.reason,
        "algorithm": churn.kind,
        "holdout": churn.split,
        **churn.metrics,
        **{f"baseline_{k}_roc_auc": v["roc_auc"] for k, v in churn.baselines.items()},
    }


def spend_between(earlier: pd.DataFrame, later: pd.DataFrame) -> pd.Series:
    """Per user of `earlier` (features as of a date), what they spent until the date of `later`: the growth of
    their lifetime spend (0 when they bought nothing)."""
    before = earlier.set_index("user_id")["lifetime_spend"].astype(float)
    after = later.set_index("user_id")["lifetime_spend"].astype(float).reindex(before.index)
    return (after - before).fillna(0.0).clip(lower=0.0)


def clv_errors(predicted: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """Per-customer and total error of predicted against realised spend."""
    predicted, realised = np.asarray(predicted, float), np.asarray(realised, float)
    total = realised.sum()
    return {
        "mae": float(np.mean(np.abs(predicted - realised))),
        "rmse": float(np.sqrt(np.mean((predicted - realised) ** 2))),
        "total_predicted": float(predicted.sum()),
        "total_realised": float(total),
        "total_error": float((predicted.sum() - total) / total) if total else float("nan"),
        "spearman": float(pd.Series(predicted).corr(pd.Series(realised), method="spearman")),
    }


def train_lifetime_value(
    settings: Settings,
    mlflow,
    client,
    features: pd.DataFrame,
    calibration: pd.DataFrame,
    as_of: date,
    lineage: dict,
) -> dict:
    """BG/NBD + Gamma-Gamma. Holdout in time: fitted on the buyers as of D - H (`calibration`), their spend
    predicted over the H days to D and compared with what they spent (mean absolute error per customer, total
    error) - the same for the champion as of D; the registered model is then fitted on everyone as of D."""
    from mlflow.models import infer_signature

    from segflow.ml.pyfunc import LifetimeValueModel

    horizon = settings.horizon_days
    cfg = settings.model.lifetime_value
    discount, tolerance = cfg.discount_rate, cfg.champion_tolerance
    buyers = calibration[calibration["lifetime_orders"] > 0]
    realised = spend_between(buyers, features).to_numpy()
    held_in = clv_inputs(buyers)
    tags = {
        **lineage,
        "model": CLV_MODEL,
        "data_window_start": (as_of - timedelta(days=horizon)).isoformat(),
        "data_window_end": as_of.isoformat(),
    }
    with mlflow.start_run(run_name=f"lifetime value {as_of}", tags=tags):
        challenger = LifetimeValue.fit(held_in, discount)
        metrics = clv_errors(challenger.expected_spend(held_in, horizon), realised)
        model = LifetimeValue.fit(clv_inputs(features[features["lifetime_orders"] > 0]), discount)
        mlflow.log_params({**model.params(), "holdout_days": horizon, "holdout_customers": len(buyers)})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if v == v})
        example = pd.DataFrame({"x": [0.0, 2.0], "t_x": [0.0, 60.0], "T": [30.0, 120.0], "m": [np.nan, 50.0]})
        wrapper = LifetimeValueModel(model, cfg.value_horizon_days, 90)
        info = mlflow.pyfunc.log_model(
            name=CLV_MODEL,
            python_model=wrapper,
            registered_model_name=CLV_MODEL,
            input_example=example,
            signature=infer_signature(example, wrapper.model.predict(example)),
            pip_requirements=model_requirements(PYFUNC_MODEL_PACKAGES),
        )
        version = str(info.registered_model_version)
        for key, value in {**tags, "holdout_mae": metrics["mae"]}.items():
            client.set_model_version_tag(CLV_MODEL, version, key, str(value))
        champion = champion_as_of(client, CLV_MODEL, as_of)
        to_beat = None
        if champion is not None and str(champion.version) != version:

            def clv_on_holdout() -> float:
                previous = load_version(mlflow, CLV_MODEL, champion.version)
                return clv_errors(previous.expected_spend(held_in, horizon), realised)["mae"]

            to_beat = metric_to_beat(champion, as_of, horizon, clv_on_holdout, "holdout_mae")
        decision = decide_alias(
            client,
            CLV_MODEL,
            version,
            metrics["mae"],
            to_beat,
            tolerance,
            higher_is_better=False,
            metric_name=f"holdout MAE of {horizon}-day spend",
            champion_version=getattr(champion, "version", None),
            as_of=as_of,
        )
        mlflow.log_dict(decision.__dict__, "promotion_decision.json")
        mlflow.set_tag("promotion_decision", decision.alias)
    return {
        "version": version,
        "alias": decision.alias,
        "reason": decision.reason,
        **{f"holdout_{k}": v for k, v in metrics.items()},
        **model.params(),
    }
