"""Score every user with the champion models and publish marts.user_scores atomically.

The scoring task (segflow.airflow.callables.score) gates the scores with GX between compute and publish."""

from __future__ import annotations

import json
import logging
from datetime import date

import numpy as np
import pandas as pd

from segflow.core.config import Settings
from segflow.core.engines import connect_engine, scalar
from segflow.core.tables import SCORES_COLUMNS, SCORES_TABLE, ensure_output_tables
from segflow.ml.churn import model_features, reason_codes, risk_band
from segflow.ml.clustering import CLUSTER_COLUMNS
from segflow.ml.clv import clv_inputs
from segflow.ml.features import prepare, read_features
from segflow.ml.registry import CHURN_MODEL, CLUSTER_MODEL, CLV_MODEL, load_champion

log = logging.getLogger(__name__)


def features_as_of(settings: Settings, as_of: date) -> pd.DataFrame:
    features = read_features(settings.warehouse_url)
    if len(features) and str(features["as_of"].iloc[0])[:10] == as_of.isoformat():
        return features
    history = read_features(settings.warehouse_url, as_of)
    if history.empty:
        raise LookupError(f"no user features as of {as_of}: run the build DAG (segflow_build) for that date first")
    return history


def compute_scores(settings: Settings, as_of: date) -> tuple[pd.DataFrame, str, str]:
    """Score every user as of `as_of` with the models that were champions then (registry.champion_as_of): a
    backfilled past date is scored by the models of its time, never by one that learnt from its future."""
    features = features_as_of(settings, as_of)
    clusterer, cluster_version = load_champion(settings, CLUSTER_MODEL, as_of)
    churn_model, churn_version = load_champion(settings, CHURN_MODEL, as_of)
    lifetime_value, clv_version = load_champion(settings, CLV_MODEL, as_of)
    personas = json.loads(cluster_version.tags.get("personas", "{}"))
    cluster_id = clusterer.predict(prepare(features, CLUSTER_COLUMNS)).astype(int)
    churn_input = prepare(features, model_features(churn_model))
    proba = churn_model.predict_proba(churn_input)[:, 1]
    # Churn is defined among buyers: users without a purchase get no probability and band 'prospect'.
    buyer = features["lifetime_orders"].to_numpy() > 0
    proba = np.where(buyer, np.clip(proba, 0.0, 1.0), np.nan)
    bands = settings.raw["churn"]["risk_bands"]
    band = np.where(buyer, risk_band(np.nan_to_num(proba), float(bands["medium"]), float(bands["high"])), "prospect")
    # Reasons where marketers act: the buyers at medium or high risk.
    at_risk = buyer & (band != "low")
    reasons = np.full(len(features), None, dtype=object)
    if at_risk.any():
        reasons[at_risk] = reason_codes(churn_model, churn_input[at_risk], reference=churn_input[buyer])
    value = lifetime_value.predict(clv_inputs(features), settings.model.lifetime_value.value_horizon_days, 90)
    scores = pd.DataFrame(
        {
            "user_id": features["user_id"].astype(str),
            "as_of": pd.to_datetime(features["as_of"]).dt.date,
            "cluster_id": cluster_id,
            "persona": [personas.get(str(c), f"Cluster {c}") for c in cluster_id],
            "churn_probability": proba,
            "churn_risk_band": band,
            "churn_reasons": reasons,
            "expected_orders_90d": value["expected_orders_90d"].to_numpy(),
            "p_alive": value["p_alive"].to_numpy(),
            "clv_12m": value["clv"].to_numpy(),
            "clusterer_version": str(cluster_version.version),
            "churn_model_version": str(churn_version.version),
            "clv_model_version": str(clv_version.version),
        }
    )
    return scores, str(cluster_version.version), str(churn_version.version)


def read_scores(settings: Settings, as_of: date) -> pd.DataFrame:
    """The published scores of `as_of` (from the history, so a past date can be monitored too)."""
    with connect_engine(settings.warehouse_url) as engine:
        scores = engine.frame(
            "SELECT * FROM marts.user_scores_history WHERE as_of = CAST(? AS DATE) ORDER BY user_id",
            [as_of.isoformat()],
        )
    if scores.empty:
        raise LookupError(f"no scores as of {as_of}: run the scoring DAG (segflow_score) for that date first")
    return scores


def publish_scores(settings: Settings, scores: pd.DataFrame, as_of: date) -> int:
    """Replace the as_of partition of scoring.user_scores in one transaction. dbt's views on top show it:
    marts.user_scores_history (every date) and marts.user_scores (the latest date scored), so a backfilled
    earlier date never changes the current scores and readers never see a half-written date."""
    columns = list(SCORES_COLUMNS)
    computed = {
        "primary_segment": "coalesce(seg.segment_name, 'General Audience')",
        "scored_at": "CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP)",
    }
    select = [f"{computed[c]} AS {c}" if c in computed else f"s.{c}" for c in columns]
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        ensure_output_tables(engine)
        segments = scalar(
            engine, "SELECT count(*) FROM marts.user_segment_history WHERE as_of = CAST(? AS DATE)", [as_of.isoformat()]
        )
        if not segments:
            raise LookupError(
                f"marts.user_segment_history holds no memberships as of {as_of}: run the build DAG for that date first"
            )
        with engine.transaction(scores_df=scores[[c for c in columns if c not in computed]]):
            engine.execute("DELETE FROM scoring.user_scores WHERE as_of = CAST(? AS DATE)", [as_of.isoformat()])
            engine.execute(f"""
                INSERT INTO {SCORES_TABLE} ({", ".join(columns)})
                SELECT {", ".join(select)}
                FROM scores_df s
                LEFT JOIN marts.user_segment_history seg
                  ON seg.user_id = s.user_id AND seg.is_primary AND seg.as_of = s.as_of
            """)
            latest = scalar(engine, f"SELECT max(as_of) FROM {SCORES_TABLE}")
            if latest != as_of:
                log.info(
                    "scores as of %s stored in the history; marts.user_scores stays as of %s (the latest)",
                    as_of,
                    latest,
                )
        return scalar(engine, f"SELECT count(*) FROM {SCORES_TABLE} WHERE as_of = CAST(? AS DATE)", [as_of.isoformat()])
