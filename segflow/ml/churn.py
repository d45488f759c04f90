"""Churn: P(no completed purchase in the H days after the as-of date), trained point in time.

Training rows come from ml.churn_training_set: features as of several past snapshot dates, each labelled
over the H days that followed it (all ending by the as-of date). Candidates:

- logistic_regression: a regularised logistic regression on log-scaled features expanded in splines (a smooth,
  monotone-or-not effect per feature; missing values imputed, with indicators), calibrated by construction;
- gradient_boosting: histogram gradient boosting with monotone constraints where the direction is known
  (more days since the last purchase never lowers the risk), calibrated with a sigmoid - isotonic calibration
  collapses to steps of 0 and 1 on small data;
- ensemble: the mean of the two probabilities.

The candidate is chosen by rolling time-based validation over several snapshot dates (each fold trains on the
snapshots before the one it validates on) - one snapshot would pick by noise: the ensemble, unless a single model
validates better by more than SELECTION_MARGIN. Reported next to two simple
baselines on the latest snapshot (recency alone, an RFM logistic regression): ROC-AUC, PR-AUC, Brier score and
lift in the top decile. The published claim is the backtest (segflow.ml.backtest), not these numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, SplineTransformer, StandardScaler

from segflow.ml.features import (
    BOOLEAN_FEATURES,
    CATEGORICAL_FEATURES,
    COUNT_FEATURES,
    MODEL_FEATURES,
    RATIO_FEATURES,
    SCORE_FEATURES,
    log1p_clipped,
    observed,
    prepare,
    preprocessor,
)

log = logging.getLogger(__name__)

CANDIDATES = ("logistic_regression", "gradient_boosting", "ensemble")
RFM_FEATURES = ["recency_days", "frequency_365d", "monetary_365d"]
# Directions known in advance (1: the risk never falls as the feature grows; -1: never rises).
MONOTONE = {"recency_days": 1, "days_since_last_activity": 1, "orders_90d": -1, "frequency_365d": -1}
VALIDATION_FOLDS = 2  # the latest snapshots each validated on by a model of the snapshots before it
# The ensemble averages away each member's variance; a single model replaces it only when it validates clearly
# better - by more than about one standard error of a ROC-AUC on a few thousand customers.
SELECTION_MARGIN = 0.015


def _spline_logistic(X: pd.DataFrame) -> Pipeline:
    numeric = observed(COUNT_FEATURES, X)
    plain = observed(SCORE_FEATURES + BOOLEAN_FEATURES, X)
    ratios = observed(RATIO_FEATURES, X)
    missing = [c for c in numeric + plain + ratios if X[c].isna().any()]
    parts = [
        (
            "log",
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median")),
                    ("log1p", FunctionTransformer(log1p_clipped, feature_names_out="one-to-one")),
                    ("spline", SplineTransformer(n_knots=5, degree=3)),
                ]
            ),
            numeric,
        ),
        (
            "num",
            Pipeline([("impute", SimpleImputer(strategy="median")), ("spline", SplineTransformer(n_knots=4))]),
            plain,
        ),
        ("ratio", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), ratios),
        ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=0.01, sparse_output=False), CATEGORICAL_FEATURES),
    ]
    if missing:
        parts.append(("missing", MissingIndicator(features="all"), missing))
    return Pipeline(
        [
            ("prep", ColumnTransformer([p for p in parts if p[2]], verbose_feature_names_out=False)),
            ("model", LogisticRegression(C=0.03, max_iter=5000)),
        ]
    )


def _boosting(X: pd.DataFrame, seed: int) -> Pipeline:
    numeric = observed(COUNT_FEATURES + SCORE_FEATURES + RATIO_FEATURES + BOOLEAN_FEATURES, X)
    prep = ColumnTransformer(
        [
            ("num", "passthrough", numeric),  # missing values are a branch of their own in the trees
            (
                "cat",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                    min_frequency=0.01,
                ),
                CATEGORICAL_FEATURES,
            ),
        ],
        verbose_feature_names_out=False,
    )
    clf = HistGradientBoostingClassifier(
        max_iter=400,
        learning_rate=0.03,
        max_leaf_nodes=6,
        min_samples_leaf=min(200, max(20, len(X) // 50)),
        l2_regularization=1.0,
        monotonic_cst=[MONOTONE.get(c, 0) for c in numeric] + [0] * len(CATEGORICAL_FEATURES),
        categorical_features=[False] * len(numeric) + [True] * len(CATEGORICAL_FEATURES),
        random_state=seed,
    )
    return Pipeline([("prep", prep), ("model", CalibratedClassifierCV(clf, method="sigmoid", cv=3))])


def _candidate(kind: str, seed: int, X: pd.DataFrame) -> Pipeline | VotingClassifier:
    if kind == "rfm_logistic_regression":  # baseline: three classic columns, no calibration step
        return Pipeline(
            [("prep", preprocessor(observed(RFM_FEATURES, X), [], [])), ("model", LogisticRegression(max_iter=2000))]
        )
    if kind == "logistic_regression":
        return _spline_logistic(X)
    if kind == "gradient_boosting":
        return _boosting(X, seed)
    if kind == "ensemble":
        return VotingClassifier(
            [("logistic_regression", _spline_logistic(X)), ("gradient_boosting", _boosting(X, seed))], voting="soft"
        )
    raise ValueError(f"unknown churn candidate {kind!r}; choose from {', '.join(CANDIDATES)}")


def lift_top_decile(y: np.ndarray, p: np.ndarray) -> float:
    n = max(1, int(np.ceil(len(p) * 0.1)))
    top = np.argsort(-p, kind="stable")[:n]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def evaluate(y: np.ndarray, p: np.ndarray, probabilities: bool = True) -> dict[str, float]:
    """Holdout metrics of a score; the Brier score only where the score is a probability."""
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)) if probabilities else float("nan"),
        "lift_top_decile": lift_top_decile(y, p),
        "positive_rate": float(y.mean()),
        "n": int(len(y)),
    }


def expected_auc(true_p: np.ndarray, score: np.ndarray) -> float:
    """The ROC-AUC a score is expected to reach when each label is drawn with its true probability: pairs
    (i churns, j stays) weigh p_i * (1 - p_j). With score = true_p this is the Bayes-optimal AUC. Free of the
    noise of one draw of outcomes, so a model can be compared with the optimum on a few thousand users."""
    order = np.argsort(score, kind="stable")
    p, s = np.asarray(true_p, float)[order], np.asarray(score, float)[order]
    # For each i: weight of j with s_j < s_i (and half of ties) among non-churners.
    stay = 1 - p
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    cum_stay = np.concatenate([[0.0], np.cumsum(stay)])
    below = np.repeat(cum_stay[first], counts)
    tied = np.repeat(cum_stay[first + counts] - cum_stay[first], counts) - stay
    wins = np.sum(p * (below + 0.5 * tied))
    total = p.sum() * stay.sum() - np.sum(p * stay)
    return float(wins / total)


def time_folds(training: pd.DataFrame, holdout_share: float, seed: int, folds: int = VALIDATION_FOLDS):
    """[(train mask, validation mask, description)], oldest fold first: each of the latest `folds` snapshots
    validated by a model of the snapshots before it (the last fold holds out the latest snapshot). With a single
    snapshot (too little history for several) a stratified random split is the fallback, and says so."""
    snapshots = pd.to_datetime(training["as_of"]) if "as_of" in training else pd.Series(pd.NaT, index=training.index)
    dates = sorted(snapshots.dropna().unique())
    if len(dates) >= 2:
        out = []
        for day in dates[-min(folds, len(dates) - 1) :]:
            before = (snapshots < day).to_numpy()
            held = (snapshots == day).to_numpy()
            earlier = int((pd.Series(dates) < day).sum())
            out.append(
                (before, held, f"time: snapshot {pd.Timestamp(day).date()} held out, trained on {earlier} earlier")
            )
        return out
    log.warning("churn training set has a single snapshot: falling back to a random holdout")
    y = training["churned"].astype(bool).to_numpy()
    idx_train, _ = train_test_split(np.arange(len(training)), test_size=holdout_share, stratify=y, random_state=seed)
    train = np.zeros(len(training), dtype=bool)
    train[idx_train] = True
    return [(train, ~train, "random (single snapshot)")]


def time_split(training: pd.DataFrame, holdout_share: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The last fold of time_folds: (train, holdout, description) with the latest snapshot held out."""
    return time_folds(training, holdout_share, seed, folds=1)[-1]


@dataclass
class ChurnResult:
    model: Pipeline
    kind: str
    metrics: dict
    candidates: dict
    baselines: dict
    holdout: pd.DataFrame  # features + label of the holdout rows (for champion comparison and plots)
    holdout_pred: np.ndarray
    importance: pd.DataFrame
    split: str
    extra: dict = field(default_factory=dict)


def permutation_importance(model, X: pd.DataFrame, y: np.ndarray, n_repeats: int = 3, seed: int = 42) -> pd.DataFrame:
    """The ROC-AUC lost when each feature's values are shuffled: sklearn.inspection.permutation_importance with
    scoring="roc_auc" and the same permutations, but one predict_proba over every shuffled copy instead of one
    call per feature and repeat - per call, the ensemble's overhead outweighs its work on a few thousand rows.

    Args:
        model: a fitted classifier with predict_proba.
        X: the rows to shuffle (a holdout sample).
        y: their 0/1 labels.
        n_repeats: shuffles per feature.
        seed: seeds the shuffles as sklearn's random_state does.

    Returns:
        One row per feature: feature, importance_mean, importance_std, the largest loss first.
    """
    # sklearn draws one seed and replays it for every column; each repeat shuffles the already shuffled column.
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    copies = [X]
    for column in X.columns:
        rng, order, values = np.random.RandomState(column_seed), np.arange(len(X)), X[column]
        for _ in range(n_repeats):
            rng.shuffle(order)
            values = values.iloc[order].set_axis(X.index)
            copies.append(X.assign(**{column: values}))
    proba = model.predict_proba(pd.concat(copies, ignore_index=True))[:, 1].reshape(len(copies), len(X))
    baseline = roc_auc_score(y, proba[0])
    losses = baseline - np.array([roc_auc_score(y, p) for p in proba[1:]]).reshape(X.shape[1], n_repeats)
    return pd.DataFrame(
        {"feature": X.columns, "importance_mean": losses.mean(axis=1), "importance_std": losses.std(axis=1)}
    ).sort_values("importance_mean", ascending=False)


def train_churn(
    training: pd.DataFrame,
    seed: int = 42,
    holdout_share: float = 0.25,
    candidates: tuple[str, ...] = CANDIDATES,
    refit_on_all: bool = True,
) -> ChurnResult:
    """Validate every candidate on the rolling time folds, choose the best mean ROC-AUC, report the latest fold
    (the latest snapshot held out) beside the baselines; then (by default) refit the winner with the same
    settings on every snapshot, so the registered model knows the latest behaviour."""
    y = training["churned"].astype(bool).to_numpy().astype(int)
    if len(training) < 40 or y.min() == y.max():
        raise ValueError(
            f"churn training needs at least 40 rows and both classes; got {len(training)} rows, {int(y.sum())} churned"
        )
    X = prepare(training, MODEL_FEATURES)
    folds = time_folds(training, holdout_share, seed)
    for train_mask, hold_mask, split in folds:
        if len(np.unique(y[train_mask])) < 2 or len(np.unique(y[hold_mask])) < 2:
            raise ValueError(f"churn training and holdout both need churned and retained users ({split})")
    base = [k for k in candidates if k != "ensemble"]
    if "ensemble" in candidates:
        base = list(dict.fromkeys([*base, "logistic_regression", "gradient_boosting"]))
    fold_auc: dict[str, list[float]] = {k: [] for k in candidates}
    last: dict[str, np.ndarray] = {}
    fitted: dict = {}
    for train_mask, hold_mask, _ in folds:
        X_train, X_hold, y_train, y_hold = X[train_mask], X[hold_mask], y[train_mask], y[hold_mask]
        predictions = {}
        for kind in base:
            fitted[kind] = _candidate(kind, seed, X_train).fit(X_train, y_train)
            predictions[kind] = fitted[kind].predict_proba(X_hold)[:, 1]
        if "ensemble" in candidates:  # what VotingClassifier(soft) predicts: the mean of the two probabilities
            predictions["ensemble"] = (predictions["logistic_regression"] + predictions["gradient_boosting"]) / 2
        for kind in candidates:
            fold_auc[kind].append(float(roc_auc_score(y_hold, predictions[kind])))
        last = predictions
    train_mask, hold_mask, split = folds[-1]
    X_train, X_test, y_train, y_test = X[train_mask], X[hold_mask], y[train_mask], y[hold_mask]
    results = {k: {**evaluate(y_test, last[k]), "validation_roc_auc": float(np.mean(fold_auc[k]))} for k in candidates}
    best = max(candidates, key=lambda k: (results[k]["validation_roc_auc"], -CANDIDATES.index(k)))
    if (
        "ensemble" in candidates
        and results[best]["validation_roc_auc"] - results["ensemble"]["validation_roc_auc"] <= SELECTION_MARGIN
    ):
        best = "ensemble"
    pred = last[best]
    model = (
        fitted[best]
        if best != "ensemble"
        else VotingClassifier(
            [
                ("logistic_regression", fitted["logistic_regression"]),
                ("gradient_boosting", fitted["gradient_boosting"]),
            ],
            voting="soft",
        )
    )
    recency = X_test["recency_days"].fillna(X_test["recency_days"].max()).to_numpy()
    baselines = {"recency_only": evaluate(y_test, recency, probabilities=False)}
    rfm = _candidate("rfm_logistic_regression", seed, X_train).fit(X_train, y_train)
    baselines["rfm_logistic_regression"] = evaluate(y_test, rfm.predict_proba(X_test)[:, 1])
    holdout = X_test.copy()
    holdout["churned"] = y_test
    if refit_on_all or best == "ensemble":  # a VotingClassifier of prefitted members must be refitted to predict
        model = _candidate(best, seed, X).fit(X, y)
    sample = min(len(X_test), 3000)
    importance = permutation_importance(model, X_test.iloc[:sample], y_test[:sample], n_repeats=3, seed=seed)
    return ChurnResult(
        model,
        best,
        results[best],
        results,
        baselines,
        holdout,
        pred,
        importance,
        split,
        {
            "train_rows": int(len(X_train)),
            "holdout_rows": int(len(X_test)),
            "refit_on_all": refit_on_all,
            "validation_folds": len(folds),
        },
    )


def model_features(model) -> list[str]:
    """The columns a fitted churn model reads (older versions may read fewer than MODEL_FEATURES)."""
    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(model, "estimators_"):
        names = getattr(model.estimators_[0], "feature_names_in_", None)
    return list(names) if names is not None else list(MODEL_FEATURES)


REASON_BATCH_ROWS = 200_000  # rows per prediction of the occluded copies: one call, bounded memory


def _is_value(series: pd.Series, value) -> np.ndarray:
    """Where `series` holds `value` (missing matching missing), as a plain boolean array."""
    if pd.isna(value):
        return series.isna().to_numpy(dtype=bool)
    return series.eq(value).fillna(False).to_numpy(dtype=bool)


def reason_codes(model, X: pd.DataFrame, top: int = 3, reference: pd.DataFrame | None = None) -> list[str | None]:
    """Per user, the features that raise their churn probability most, as 'feature=value (+points)': each
    feature's contribution is how much the probability falls when that feature alone is set to the typical value
    of `reference` (all buyers scored; X itself by default): median, or the most frequent category. None when no
    feature raises it. The occluded copies of a batch of users are predicted in one call (a call per feature
    costs the model's fixed overhead - for boosted trees one pass over every tree - each time)."""
    reference = X if reference is None else reference
    columns, typical = [], []
    for col in X.columns:
        series = reference[col]
        if series.isna().all():
            continue
        columns.append(col)
        typical.append(series.mode().iloc[0] if col in CATEGORICAL_FEATURES else float(series.median()))
    if not columns:
        return [None] * len(X)
    matrix = np.zeros((len(X), len(columns)))
    # A user whose value already is the typical one gains nothing from setting it: exactly 0, not predicted. On
    # generated data at 100k users that is a third of all (user, feature) pairs.
    differs = np.column_stack([~_is_value(X[col], value) for col, value in zip(columns, typical, strict=True)])
    step = max(1, REASON_BATCH_ROWS // (len(columns) + 1))
    for start in range(0, len(X), step):
        part = X.iloc[start : start + step]
        part_differs = differs[start : start + step]
        copies = [part]
        for j, (col, value) in enumerate(zip(columns, typical, strict=True)):
            changed = part[part_differs[:, j]].copy()
            changed[col] = value
            copies.append(changed)
        p = model.predict_proba(pd.concat(copies, ignore_index=True))[:, 1]
        base, offset = p[: len(part)], len(part)
        for j in range(len(columns)):
            rows = np.flatnonzero(part_differs[:, j])
            matrix[start + rows, j] = base[rows] - p[offset : offset + len(rows)]
            offset += len(rows)
    order = np.argsort(-matrix, axis=1)[:, :top]
    values = X[columns].to_numpy(dtype=object)
    out: list[str | None] = []
    for i in range(len(X)):
        parts = []
        for j in order[i]:
            if matrix[i, j] < 0.005:  # below half a percentage point: not a reason
                break
            value = values[i, j]
            shown = "unknown" if pd.isna(value) else (value if isinstance(value, str) else f"{float(value):g}")
            parts.append(f"{columns[j]}={shown} (+{matrix[i, j]:.2f})")
        out.append("; ".join(parts) or None)
    return out


def risk_band(p: np.ndarray, medium: float, high: float) -> np.ndarray:
    return np.where(p >= high, "high", np.where(p >= medium, "medium", "low"))
