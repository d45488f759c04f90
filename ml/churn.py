"""Churn: P(no completed purchase in the H days after the as-of date), trained point in time.

Training rows come from ml.churn_training_set (features as of as_of - H, label observed by as_of).
Candidates: a logistic-regression baseline and gradient boosting, both calibrated; the best holdout
ROC-AUC wins. Metrics: ROC-AUC, PR-AUC, Brier score, lift in the top decile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from ml.features import (BOOLEAN_FEATURES, CATEGORICAL_FEATURES, COUNT_FEATURES, MODEL_FEATURES, SCORE_FEATURES, observed,
                         prepare, preprocessor)


def _candidate(kind: str, seed: int, X: pd.DataFrame) -> Pipeline:
    prep = preprocessor(observed(COUNT_FEATURES, X), observed(SCORE_FEATURES + BOOLEAN_FEATURES, X), CATEGORICAL_FEATURES)
    if kind == "logistic_regression":
        clf = LogisticRegression(max_iter=2000, C=1.0)
    elif kind == "gradient_boosting":
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
                                             random_state=seed)
    else:
        raise ValueError(kind)
    return Pipeline([("prep", prep), ("model", CalibratedClassifierCV(clf, method="isotonic", cv=3))])


def lift_top_decile(y: np.ndarray, p: np.ndarray) -> float:
    n = max(1, int(np.ceil(len(p) * 0.1)))
    top = np.argsort(-p, kind="stable")[:n]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
            "brier": float(brier_score_loss(y, p)), "lift_top_decile": lift_top_decile(y, p),
            "positive_rate": float(y.mean()), "n": int(len(y))}


@dataclass
class ChurnResult:
    model: Pipeline
    kind: str
    metrics: dict
    candidates: dict
    holdout: pd.DataFrame  # features + label of the holdout rows (for champion comparison and plots)
    holdout_pred: np.ndarray
    importance: pd.DataFrame
    extra: dict = field(default_factory=dict)


def train_churn(training: pd.DataFrame, seed: int = 42, holdout_share: float = 0.25) -> ChurnResult:
    y = training["churned"].astype(bool).to_numpy().astype(int)
    if len(training) < 40 or y.min() == y.max():
        raise ValueError(f"churn training needs at least 40 rows and both classes; got {len(training)} rows, "
                         f"{int(y.sum())} churned")
    X = prepare(training, MODEL_FEATURES)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=holdout_share, stratify=y, random_state=seed)
    candidates, fitted = {}, {}
    for kind in ("logistic_regression", "gradient_boosting"):
        pipe = _candidate(kind, seed, X_train).fit(X_train, y_train)
        candidates[kind] = evaluate(y_test, pipe.predict_proba(X_test)[:, 1])
        fitted[kind] = pipe
    best = max(candidates, key=lambda k: candidates[k]["roc_auc"])
    model = fitted[best]
    pred = model.predict_proba(X_test)[:, 1]
    sample = min(len(X_test), 3000)
    imp = permutation_importance(model, X_test.iloc[:sample], y_test[:sample], scoring="roc_auc", n_repeats=3, random_state=seed)
    importance = pd.DataFrame({"feature": X_test.columns, "importance_mean": imp.importances_mean,
                               "importance_std": imp.importances_std}).sort_values("importance_mean", ascending=False)
    holdout = X_test.copy()
    holdout["churned"] = y_test
    return ChurnResult(model, best, candidates[best], candidates, holdout, pred, importance)


def risk_band(p: np.ndarray, medium: float, high: float) -> np.ndarray:
    return np.where(p >= high, "high", np.where(p >= medium, "medium", "low"))
