"""Personas: compare clustering candidates on a sample, fit the chosen one, profile each cluster and name it.

Candidates are KMeans and MiniBatchKMeans (the same objective, faster on millions of users) over a range of
k, and Gaussian mixtures (diagonal covariance) over the same range. Within a family, k is chosen by its own
criterion (silhouette for k-means, BIC for mixtures); across families the silhouette on the same sample
decides, Calinski-Harabasz breaking near-ties. The winner must also be stable: fits on bootstrap resamples
must agree with it (adjusted Rand index), otherwise the next candidate is tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline

from segflow.ml.features import (
    CLUSTER_LOG_FEATURES,
    CLUSTER_PLAIN_FEATURES,
    PROFILE_FEATURES,
    observed,
    prepare,
    preprocessor,
)

CLUSTER_COLUMNS = CLUSTER_LOG_FEATURES + CLUSTER_PLAIN_FEATURES
ALGORITHMS = ("kmeans", "minibatch_kmeans", "gaussian_mixture")
# How a strongly high / low feature reads in a persona name, strongest traits first.
TRAIT_WORDS = {
    "monetary_365d": ("Big Spenders", "Low Spenders"),
    "frequency_365d": ("Frequent Buyers", "Rare Buyers"),
    "active_days_30d": ("Daily Visitors", "Infrequent Visitors"),
    "sessions_30d": ("Avid Browsers", "Light Browsers"),
    "tenure_days": ("Long-standing", "Newcomers"),
    "age": ("Mature", "Young"),
    "recency_days": ("Lapsing", "Recent"),
    "engagement_score": ("Highly Engaged", "Disengaged"),
    "email_clicks_30d": ("Email Responsive", "Email Silent"),
}
NOUNS = {
    "Big Spenders",
    "Low Spenders",
    "Frequent Buyers",
    "Rare Buyers",
    "Daily Visitors",
    "Infrequent Visitors",
    "Avid Browsers",
    "Light Browsers",
    "Newcomers",
}
TRAIT_THRESHOLD = 0.4  # |z| of a cluster mean against the population for a trait to name it
MIN_STABILITY = 0.6  # bootstrap ARI below this means the partition is noise, not personas


@dataclass
class ClusteringResult:
    model: Pipeline
    k: int
    algorithm: str
    selection: pd.DataFrame  # one row per candidate: algorithm, k, silhouette, calinski_harabasz, bic, chosen
    profile: pd.DataFrame  # one row per cluster
    stability_ari: float
    labels: np.ndarray
    metrics: dict = field(default_factory=dict)


def _estimator(algorithm: str, k: int, seed: int, n: int) -> BaseEstimator:
    if algorithm == "kmeans":
        return KMeans(n_clusters=k, n_init=4, random_state=seed)
    if algorithm == "minibatch_kmeans":
        return MiniBatchKMeans(n_clusters=k, n_init=4, batch_size=min(4096, max(256, n // 10)), random_state=seed)
    if algorithm == "gaussian_mixture":
        return GaussianMixture(n_components=k, covariance_type="diag", n_init=2, random_state=seed)
    raise ValueError(f"unknown clustering algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


class MarginalClusterer(ClusterMixin, BaseEstimator):
    """A clusterer fitted on the users whose features are all known, assigning the others on the features they
    have: the nearest centre over the observed dimensions (k-means), or the most likely component of the marginal
    density (a diagonal Gaussian mixture - marginalising a dimension is dropping it). A user who has not consented
    to tracking has no behaviour features: imputing a typical value would place them, and the fitted clusters,
    where they do not belong."""

    def __init__(self, estimator: BaseEstimator):
        self.estimator = estimator

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=float)
        complete = ~np.isnan(X).any(axis=1)
        if complete.sum() < 2:
            raise ValueError("clustering needs users whose clustering features are all known")
        self.estimator_ = clone(self.estimator).fit(X[complete])
        self.counts_ = np.bincount(self.estimator_.predict(X[complete]), minlength=self._k())
        return self

    def _k(self) -> int:
        model = self.estimator_
        return len(model.cluster_centers_) if hasattr(model, "cluster_centers_") else len(model.means_)

    def predict(self, X):
        X = np.asarray(X, dtype=float)
        missing = np.isnan(X)
        complete = ~missing.any(axis=1)
        labels = np.empty(len(X), dtype=int)
        if complete.any():
            labels[complete] = self.estimator_.predict(X[complete])
        partial = ~complete
        if partial.any():
            Xp, seen = X[partial], ~missing[partial]
            model = self.estimator_
            if hasattr(model, "cluster_centers_"):
                diff = np.where(seen[:, None, :], Xp[:, None, :] - model.cluster_centers_[None], 0.0)
                score = -(diff**2).sum(axis=2)
            else:
                var = model.covariances_  # diagonal: (k, d)
                terms = (Xp[:, None, :] - model.means_[None]) ** 2 / var[None] + np.log(2 * np.pi * var)[None]
                score = -0.5 * np.where(seen[:, None, :], terms, 0.0).sum(axis=2) + np.log(model.weights_)[None]
            nothing = ~seen.any(axis=1)
            score[nothing] = np.log(self.counts_ + 1)[None]  # nothing known: the largest cluster
            labels[partial] = score.argmax(axis=1)
        return labels


def cluster_pipeline(algorithm: str, k: int, seed: int, X: pd.DataFrame) -> Pipeline:
    """Log scaling of counts and standardisation travel inside the model; unknown values stay unknown (NaN) and
    the clusterer assigns those users on what is known (MarginalClusterer)."""
    prep = preprocessor(observed(CLUSTER_LOG_FEATURES, X), observed(CLUSTER_PLAIN_FEATURES, X), [], impute=False)
    return Pipeline([("prep", prep), ("cluster", MarginalClusterer(_estimator(algorithm, k, seed, len(X))))])


def _silhouette(Z: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(np.unique(labels)) < 2:
        return -1.0
    return float(silhouette_score(Z, labels, sample_size=min(5000, len(Z)), random_state=seed))


def evaluate_candidates(
    X: pd.DataFrame, k_min: int, k_max: int, seed: int, algorithms: tuple[str, ...] = ALGORITHMS
) -> pd.DataFrame:
    """Fit every (algorithm, k) on `X` (a sample) and score it in the shared standardised space."""
    # Every candidate's pipeline starts with the same preprocessing of the same sample: transform once. Candidates
    # are compared on the users whose features are all known (the others are assigned by the chosen model).
    Z = cluster_pipeline(algorithms[0], k_min, seed, X).named_steps["prep"].fit_transform(X)
    Z = Z[~np.isnan(Z).any(axis=1)]
    rows = []
    for algorithm in algorithms:
        for k in range(k_min, min(k_max, len(X) - 1) + 1):
            estimator = _estimator(algorithm, k, seed, len(X)).fit(Z)
            labels = estimator.predict(Z)
            distinct = len(np.unique(labels))
            rows.append(
                {
                    "algorithm": algorithm,
                    "k": k,
                    "clusters_found": distinct,
                    "silhouette": _silhouette(Z, labels, seed),
                    "calinski_harabasz": float(calinski_harabasz_score(Z, labels)) if distinct > 1 else 0.0,
                    "bic": float(estimator.bic(Z)) if algorithm == "gaussian_mixture" else np.nan,
                }
            )
    return pd.DataFrame(rows)


def rank_candidates(selection: pd.DataFrame) -> pd.DataFrame:
    """Each family's best k by its own criterion, ordered best first across families by silhouette
    (Calinski-Harabasz breaks ties within 0.01 of silhouette)."""
    best = []
    for algorithm, group in selection[selection["clusters_found"] == selection["k"]].groupby("algorithm", sort=False):
        if algorithm == "gaussian_mixture":
            best.append(group.sort_values("bic").iloc[0])
        else:
            top = group["silhouette"].max()
            best.append(
                group[group["silhouette"] >= top - 0.01].sort_values("calinski_harabasz", ascending=False).iloc[0]
            )
    ranked = pd.DataFrame(best)
    ranked["silhouette_bucket"] = (ranked["silhouette"] / 0.01).round()
    return ranked.sort_values(["silhouette_bucket", "calinski_harabasz"], ascending=False).drop(
        columns="silhouette_bucket"
    )


def bootstrap_stability(X: pd.DataFrame, algorithm: str, k: int, seed: int, rounds: int = 3) -> float:
    """Mean adjusted Rand index between the fit on `X` and fits on bootstrap resamples of it, both labelling `X`."""
    rng = np.random.default_rng(seed)
    reference = cluster_pipeline(algorithm, k, seed, X).fit(X).predict(X)
    scores = []
    for r in range(rounds):
        idx = rng.choice(len(X), len(X), replace=True)
        refit = cluster_pipeline(algorithm, k, seed + r + 1, X).fit(X.iloc[idx])
        scores.append(adjusted_rand_score(reference, refit.predict(X)))
    return float(np.mean(scores))


def profile_clusters(features: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Size and feature means per cluster against the population, plus a persona name and description."""
    numeric = prepare(features, observed(PROFILE_FEATURES, features))
    pop_mean, pop_std = numeric.mean(), numeric.std().replace(0, 1).fillna(1)
    rows = []
    for cluster_id in sorted(np.unique(labels)):
        members = numeric[labels == cluster_id]
        z = ((members.mean() - pop_mean) / pop_std).fillna(0)
        row = {"cluster_id": int(cluster_id), "size": int(len(members)), "share": len(members) / len(numeric)}
        row.update({f"mean_{c}": float(members[c].mean()) for c in numeric.columns})
        row.update({f"z_{c}": float(z[c]) for c in numeric.columns})
        rows.append(row)
    profile = pd.DataFrame(rows)
    names, descriptions = name_personas(profile)
    profile["persona"], profile["description"] = names, descriptions
    return profile


def _traits(row: pd.Series) -> list[tuple[str, float]]:
    """(feature, z) of the naming features, strongest first."""
    z = {c: float(row[f"z_{c}"]) for c in TRAIT_WORDS if f"z_{c}" in row and pd.notna(row[f"z_{c}"])}
    return sorted(z.items(), key=lambda kv: abs(kv[1]), reverse=True)


def name_personas(profile: pd.DataFrame) -> tuple[list[str], list[str]]:
    """A readable name from each cluster's two strongest traits; where two clusters read the same, the next
    trait is added until the names differ (the cluster id only as a last resort)."""
    traits = [_traits(row) for _, row in profile.iterrows()]
    words = [
        [TRAIT_WORDS[c][0 if z > 0 else 1] for c, z in t if abs(z) >= TRAIT_THRESHOLD] or ["Typical Customers"]
        for t in traits
    ]
    used = [min(2, len(w)) for w in words]
    names = [_compose(w[:u]) for w, u in zip(words, used, strict=True)]
    for _ in range(len(TRAIT_WORDS)):
        dup = pd.Series(names).duplicated(keep=False)
        if not dup.any():
            break
        for i in np.flatnonzero(dup):
            if used[i] < len(words[i]):
                used[i] += 1
                names[i] = _compose(words[i][: used[i]])
    dup = pd.Series(names).duplicated(keep=False)
    names = [f"{n} #{int(cid)}" if d else n for n, d, cid in zip(names, dup, profile["cluster_id"], strict=True)]
    descriptions = []
    for (_, row), t in zip(profile.iterrows(), traits, strict=True):
        shown = ", ".join(
            f"{c.replace('_', ' ')} {'above' if z > 0 else 'below'} average ({z:+.1f} sd)" for c, z in t[:3]
        )
        descriptions.append(
            f"{int(row['size']):,} users ({row['share']:.0%}); {shown or 'close to the population average'}."
        )
    return names, descriptions


def _compose(words: list[str]) -> str:
    """Adjectives first, then the noun phrases ("Young Frequent Buyers"); "Customers" when there is no noun."""
    adjectives = [w for w in words if w not in NOUNS and w != "Typical Customers"]
    nouns = [w for w in words if w in NOUNS] or (
        ["Typical Customers"] if "Typical Customers" in words else ["Customers"]
    )
    return " ".join(adjectives + [" & ".join(nouns)])


def train_clustering(
    features: pd.DataFrame,
    k_min: int = 3,
    k_max: int = 8,
    sample_size: int = 20000,
    seed: int = 42,
    algorithms: tuple[str, ...] = ALGORITHMS,
    min_stability: float = MIN_STABILITY,
) -> ClusteringResult:
    if len(features) < max(10, k_min + 1):
        raise ValueError(f"clustering needs at least {max(10, k_min + 1)} users, got {len(features)}")
    X = prepare(features, CLUSTER_COLUMNS)
    if not observed(CLUSTER_COLUMNS, X):
        raise ValueError(f"no clustering feature has a value; expected some of {', '.join(CLUSTER_COLUMNS)}")
    sample = X.sample(n=min(sample_size, len(X)), random_state=seed)
    selection = evaluate_candidates(sample, k_min, k_max, seed, tuple(algorithms))
    ranked = rank_candidates(selection)
    if ranked.empty:
        raise ValueError(f"no candidate found {k_min}..{k_max} distinct clusters")
    stabilities = {}
    for _, candidate in ranked.iterrows():
        key = (candidate["algorithm"], int(candidate["k"]))
        stabilities[key] = bootstrap_stability(sample.head(min(len(sample), 5000)), *key, seed)
        if stabilities[key] >= min_stability:
            break
    else:  # nothing is stable enough: keep the most stable rather than fail the weekly retrain
        key = max(stabilities, key=lambda candidate: stabilities[candidate])
    algorithm, k = key
    selection["chosen"] = (selection["algorithm"] == algorithm) & (selection["k"] == k)
    selection["stability_ari"] = [
        stabilities.get((a, int(kk)), np.nan) for a, kk in zip(selection["algorithm"], selection["k"], strict=True)
    ]
    model = cluster_pipeline(algorithm, k, seed, X).fit(X)
    labels = model.predict(X)
    profile = profile_clusters(features, labels)
    chosen = selection[selection["chosen"]].iloc[0]
    metrics = {
        "k": k,
        "silhouette": float(chosen["silhouette"]),
        "calinski_harabasz": float(chosen["calinski_harabasz"]),
        "stability_ari": stabilities[key],
        "n_users": len(X),
    }
    if algorithm == "gaussian_mixture":
        metrics["bic"] = float(chosen["bic"])
    return ClusteringResult(model, k, algorithm, selection, profile, stabilities[key], labels, metrics)


def silhouette_of(model: Pipeline, X: pd.DataFrame, seed: int, sample_size: int = 5000) -> float:
    """Silhouette of a fitted clusterer's labels in its own transformed space (for champion comparison)."""
    sample = X.sample(n=min(sample_size, len(X)), random_state=seed)
    Z = model.named_steps["prep"].transform(sample)
    complete = ~np.isnan(Z).any(axis=1)  # distances need every feature: users with unknown ones are left out
    return _silhouette(Z[complete], model.predict(sample)[complete], seed)
