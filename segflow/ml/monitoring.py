"""Model monitoring: feature drift (PSI against each champion's training reference), the churn score
distribution and persona sizes against the previous scoring, written to ml.model_monitoring and MLflow.

A training run stores its reference (binned feature distributions) in ml.model_references, keyed by model
and version, so drift is always measured against the data the scoring model actually learned from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd

from segflow.core.config import Settings
from segflow.core.engines import connect_engine, scalar
from segflow.core.tables import MONITORING_DDL
from segflow.extract.mapping import quote_ident
from segflow.ml.clustering import CLUSTER_COLUMNS
from segflow.ml.features import CATEGORICAL_FEATURES, MODEL_FEATURES, prepare

log = logging.getLogger(__name__)

EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
MISSING = "__missing__"
REFERENCES_DDL = MONITORING_DDL  # defined with the other Python-written tables


def reference_profile(frame: pd.DataFrame, bins: int = 10) -> dict:
    """Per column: decile edges and shares (numeric) or category shares (text), each with a missing share."""
    profile = {}
    for col in frame.columns:
        series = frame[col]
        if col in CATEGORICAL_FEATURES or series.dtype == object:
            shares = series.fillna(MISSING).astype(str).value_counts(normalize=True)
            profile[col] = {"kind": "categorical", "shares": {k: float(v) for k, v in shares.items()}}
            continue
        values = pd.to_numeric(series, errors="coerce").astype("float64")
        present = values.dropna()
        edges = sorted(set(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]).tolist())) if len(present) else []
        profile[col] = {"kind": "numeric", "edges": edges, "shares": _numeric_shares(values, edges)}
    return profile


EDGE_TOLERANCE = 1e-9  # relative: a value this close above a bin edge is on the edge


def _numeric_shares(values: pd.Series, edges: list[float]) -> list[float]:
    """Shares of the bins (-inf, e1], (e1, e2], ..., (ek, inf), then missing. A value a rounding error above an
    edge counts as on it: the same feature summed in another order (another engine, parallel threads) differs in
    its last bits, and a user must not change bins - nor the PSI change - for that."""
    present = values.dropna().to_numpy()
    bounds = np.asarray(edges, dtype=float)
    bounds = bounds + np.abs(bounds) * EDGE_TOLERANCE
    counts = np.bincount(np.searchsorted(bounds, present, side="left"), minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, values.isna().sum())
    return (counts / max(1, len(values))).tolist()


def psi(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray) -> float:
    """Population stability index: sum((a - e) * ln(a / e)) over bins; < 0.1 stable, > 0.25 a real shift."""
    e = np.maximum(np.asarray(expected, float), EPSILON)
    a = np.maximum(np.asarray(actual, float), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(reference: dict, frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for col, ref in reference.items():
        if col not in frame:
            continue
        if ref["kind"] == "categorical":
            current = frame[col].fillna(MISSING).astype(str).value_counts(normalize=True)
            keys = sorted(set(ref["shares"]) | set(current.index))
            out[col] = psi([ref["shares"].get(k, 0.0) for k in keys], [float(current.get(k, 0.0)) for k in keys])
        else:
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64")
            out[col] = psi(ref["shares"], _numeric_shares(values, ref["edges"]))
    return out


def save_reference(settings: Settings, model_name: str, version: str, frame: pd.DataFrame) -> dict:
    """Store the training reference of a registered model version (warehouse table and MLflow artifact)."""
    columns = [c for c in frame.columns if c in MODEL_FEATURES or c in CLUSTER_COLUMNS]
    reference = reference_profile(prepare(frame, columns))
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(REFERENCES_DDL)
        with engine.transaction():
            engine.execute(
                "DELETE FROM ml.model_references WHERE model_name = ? AND model_version = ?", [model_name, str(version)]
            )
            engine.execute(
                "INSERT INTO ml.model_references VALUES (?, ?, ?, CAST(? AS JSON), ?)",
                [model_name, str(version), len(frame), json.dumps(reference), _now()],
            )
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(reference, "feature_reference.json")
    return reference


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class MonitoringReport:
    as_of: str
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        drift = self.rows[self.rows["check"] == "feature_psi"]
        return {
            "as_of": self.as_of,
            "checks": int(len(self.rows)),
            "warnings": self.warnings,
            "max_psi": float(drift["value"].max()) if len(drift) else 0.0,
        }


def monitor(settings: Settings, as_of: date, scores: pd.DataFrame, features: pd.DataFrame) -> MonitoringReport:
    """Compare today's features and scores with the champions' references and the previous scoring."""
    cfg = settings.raw.get("monitoring", {}) or {}
    psi_limit = float(cfg.get("psi_warning", 0.2))
    share_limit = float(cfg.get("share_change_warning", 0.1))
    mean_limit = float(cfg.get("score_mean_change_warning", 0.1))
    rows: list[dict] = []
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(REFERENCES_DDL)
        refs = {
            (n, v): r if isinstance(r, dict) else json.loads(r)  # PostgreSQL's driver parses JSON itself
            for n, v, r in engine.fetchall("SELECT model_name, model_version, reference FROM ml.model_references")
        }
        previous = (
            engine.frame(
                """
            SELECT * FROM marts.user_scores_history
            WHERE as_of = (SELECT max(as_of) FROM marts.user_scores_history WHERE as_of < CAST(? AS DATE))
        """,
                [as_of.isoformat()],
            )
            if _has_table(engine, "marts", "user_scores_history")
            else pd.DataFrame()
        )

    buyers = features[features["lifetime_orders"].fillna(0) > 0]
    for model_name, version_col, population in (
        ("user_churn", "churn_model_version", buyers),
        ("user_segments_clusterer", "clusterer_version", features),
    ):
        version = str(scores[version_col].iloc[0])
        reference = refs.get((model_name, version))
        if reference is None:
            log.warning("no training reference for %s v%s: feature drift not measured", model_name, version)
            continue
        for feature, value in sorted(feature_psi(reference, population).items()):
            rows.append(_row(as_of, "feature_psi", model_name, version, feature, value, 0.0, psi_limit))

    churn_version = str(scores["churn_model_version"].iloc[0])
    mean_now = float(scores["churn_probability"].mean())
    mean_before = float(previous["churn_probability"].mean()) if len(previous) else np.nan
    rows.append(
        _row(as_of, "score_mean", "user_churn", churn_version, "churn_probability", mean_now, mean_before, mean_limit)
    )
    for check, column, model_name, version in (
        ("risk_band_share", "churn_risk_band", "user_churn", churn_version),
        ("persona_share", "persona", "user_segments_clusterer", str(scores["clusterer_version"].iloc[0])),
    ):
        now = scores[column].value_counts(normalize=True)
        before = previous[column].value_counts(normalize=True) if len(previous) else pd.Series(dtype=float)
        for subject in sorted(set(now.index) | set(before.index)):
            rows.append(
                _row(
                    as_of,
                    check,
                    model_name,
                    version,
                    str(subject),
                    float(now.get(subject, 0.0)),
                    float(before.get(subject, np.nan)) if len(previous) else np.nan,
                    share_limit,
                )
            )
    frame = pd.DataFrame(rows)
    warnings = [_describe(r) for r in frame[frame["status"] == "warning"].itertuples()]
    for message in warnings:
        log.warning("monitoring: %s", message)
    _store(settings, as_of, frame)
    _log_to_mlflow(settings, as_of, frame, warnings)
    return MonitoringReport(as_of.isoformat(), frame, warnings)


def _row(as_of, check, model_name, version, subject, value, reference_value, threshold) -> dict:
    change = (
        value if check == "feature_psi" else abs(value - reference_value) if reference_value == reference_value else 0.0
    )
    return {
        "as_of": as_of,
        "check": check,
        "model_name": model_name,
        "model_version": version,
        "subject": subject,
        "value": float(value),
        "reference_value": reference_value,
        "threshold": threshold,
        "status": "warning" if change > threshold else "ok",
        "computed_at": _now(),
    }


def _describe(r) -> str:
    if r.check == "feature_psi":
        return f"feature drift: {r.subject} PSI {r.value:.3f} > {r.threshold} against {r.model_name} v{r.model_version}'s training data"
    return f"{r.check.replace('_', ' ')}: {r.subject} {r.reference_value:.3f} -> {r.value:.3f} (change > {r.threshold})"


def _has_table(engine, schema: str, table: str) -> bool:
    return bool(
        scalar(
            engine,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        )
    )


def _store(settings: Settings, as_of: date, frame: pd.DataFrame) -> None:
    columns = ", ".join(quote_ident(c) for c in frame.columns)
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(REFERENCES_DDL)
        with engine.transaction(monitoring_df=frame):
            engine.execute("DELETE FROM ml.model_monitoring WHERE as_of = CAST(? AS DATE)", [as_of.isoformat()])
            engine.execute(f"INSERT INTO ml.model_monitoring ({columns}) SELECT {columns} FROM monitoring_df")


def _log_to_mlflow(settings: Settings, as_of: date, frame: pd.DataFrame, warnings: list[str]) -> None:
    from segflow.ml.registry import configure_mlflow

    mlflow = configure_mlflow(settings)
    with mlflow.start_run(
        run_name=f"monitoring {as_of}",
        tags={"model": "monitoring", "as_of": as_of.isoformat(), "drift_warning": str(bool(warnings)).lower()},
    ):
        metrics: dict[str, Any] = {f"{r.check}.{r.model_name}.{r.subject}"[:250]: r.value for r in frame.itertuples()}
        mlflow.log_metrics({_metric_key(k): v for k, v in metrics.items() if v == v})
        mlflow.log_table(frame.astype({"as_of": str, "computed_at": str}), "monitoring.json")
        if warnings:
            mlflow.log_text("\n".join(warnings), "warnings.txt")


def _metric_key(key: str) -> str:
    # MLflow metric names allow alphanumerics, '_', '-', '.', ' ', '/'.
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in key)
