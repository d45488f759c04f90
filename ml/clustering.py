"""Personas: choose k on a sample, fit the clusterer, profile each cluster and name it from its profile."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, silhouette_score
from sklearn.pipeline import Pipeline

from ml.features import CLUSTER_CATEGORICAL, CLUSTER_NUMERIC, observed, prepare, preprocessor

CLUSTER_COLUMNS = CLUSTER_NUMERIC + CLUSTER_CATEGORICAL
# How a strongly high / low feature reads in a persona name.
TRAIT_WORDS = {
    "monetary_365d": ("Big Spenders", "Low Spenders"),
    "frequency_365d": ("Frequent Buyers", "Rare Buyers"),
    "recency_days": ("Lapsing", "Recent Buyers"),
    "engagement_score": ("Highly Engaged", "Disengaged"),
    "active_days_30d": ("Daily Visitors", "Infrequent Visitors"),
    "sessions_30d": ("Frequent Browsers", "Light Browsers"),
    "email_clicks_30d": ("Email Responsive", "Email Silent"),
    "intent_score_30d": ("High Intent", "Low Intent"),
    "age": ("Mature", "Young"),
}


@dataclass
class ClusteringResult:
    model: Pipeline
    k: int
    selection: pd.DataFrame  # k, silhouette, calinski_harabasz, inertia
    profile: pd.DataFrame  # one row per cluster
    stability_ari: float
    labels: np.ndarray
    metrics: dict = field(default_factory=dict)


def _pipeline(k: int, seed: int, X: pd.DataFrame) -> Pipeline:
    log_cols = observed([c for c in CLUSTER_NUMERIC if c not in ("engagement_score", "age")], X)
    plain = observed([c for c in CLUSTER_NUMERIC if c in ("engagement_score", "age")], X)
    return Pipeline([("prep", preprocessor(log_cols, plain, CLUSTER_CATEGORICAL)),
                     ("cluster", KMeans(n_clusters=k, n_init=4, random_state=seed))])


def select_k(X: pd.DataFrame, k_min: int, k_max: int, seed: int) -> pd.DataFrame:
    rows = []
    for k in range(k_min, k_max + 1):
        if k >= len(X):
            break
        pipe = _pipeline(k, seed, X).fit(X)
        Z = pipe.named_steps["prep"].transform(X)
        labels = pipe.named_steps["cluster"].labels_
        rows.append({"k": k, "silhouette": silhouette_score(Z, labels, sample_size=min(5000, len(X)), random_state=seed),
                     "calinski_harabasz": calinski_harabasz_score(Z, labels), "inertia": pipe.named_steps["cluster"].inertia_})
    return pd.DataFrame(rows)


def bootstrap_stability(X: pd.DataFrame, k: int, seed: int, rounds: int = 3) -> float:
    """Mean adjusted Rand index between the full-sample fit and fits on bootstrap resamples."""
    rng = np.random.default_rng(seed)
    reference = _pipeline(k, seed, X).fit(X).predict(X)
    scores = []
    for r in range(rounds):
        idx = rng.choice(len(X), len(X), replace=True)
        refit = _pipeline(k, seed + r + 1, X).fit(X.iloc[idx])
        scores.append(adjusted_rand_score(reference, refit.predict(X)))
    return float(np.mean(scores))


def profile_clusters(features: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Size and feature means per cluster against the population, plus a persona name and description."""
    numeric = prepare(features, CLUSTER_NUMERIC)
    pop_mean, pop_std = numeric.mean(), numeric.std().replace(0, 1)
    rows = []
    for cluster_id in sorted(np.unique(labels)):
        members = numeric[labels == cluster_id]
        z = ((members.mean() - pop_mean) / pop_std).fillna(0)
        row = {"cluster_id": int(cluster_id), "size": int(len(members)), "share": len(members) / len(numeric)}
        row.update({f"mean_{c}": float(members[c].mean()) for c in CLUSTER_NUMERIC})
        row.update({f"z_{c}": float(z[c]) for c in CLUSTER_NUMERIC})
        rows.append(row)
    profile = pd.DataFrame(rows)
    profile["persona"], profile["description"] = zip(*[_name(r) for _, r in profile.iterrows()])
    # Names must be unique: append the cluster id where two profiles read the same.
    dup = profile["persona"].duplicated(keep=False)
    profile.loc[dup, "persona"] = profile.loc[dup, "persona"] + " #" + profile.loc[dup, "cluster_id"].astype(str)
    return profile


def _name(row: pd.Series) -> tuple[str, str]:
    z = {c: row[f"z_{c}"] for c in TRAIT_WORDS}
    ranked = sorted(z, key=lambda c: abs(z[c]), reverse=True)
    words = [TRAIT_WORDS[c][0 if z[c] > 0 else 1] for c in ranked if abs(z[c]) >= 0.25][:2]
    name = " ".join(words) if words else "Typical Customers"
    traits = ", ".join(f"{c} {'above' if z[c] > 0 else 'below'} average ({z[c]:+.1f} sd)" for c in ranked[:3])
    return name, f"{row['size']} users ({row['share']:.0%}); {traits}."


def train_clustering(features: pd.DataFrame, k_min: int = 3, k_max: int = 8, sample_size: int = 20000, seed: int = 42) -> ClusteringResult:
    if len(features) < max(10, k_min + 1):
        raise ValueError(f"clustering needs at least {max(10, k_min + 1)} users, got {len(features)}")
    X = prepare(features, CLUSTER_COLUMNS)
    sample = X.sample(n=min(sample_size, len(X)), random_state=seed)
    selection = select_k(sample, k_min, k_max, seed)
    # Silhouette picks k; Calinski-Harabasz breaks near-ties (within 0.01).
    best_sil = selection["silhouette"].max()
    near = selection[selection["silhouette"] >= best_sil - 0.01]
    k = int(near.sort_values("calinski_harabasz", ascending=False).iloc[0]["k"])
    model = _pipeline(k, seed, X).fit(X)
    labels = model.predict(X)
    stability = bootstrap_stability(sample, k, seed)
    profile = profile_clusters(features, labels)
    metrics = {"k": k, "silhouette": float(selection.loc[selection.k == k, "silhouette"].iloc[0]),
               "calinski_harabasz": float(selection.loc[selection.k == k, "calinski_harabasz"].iloc[0]),
               "stability_ari": stability, "n_users": len(X)}
    return ClusteringResult(model, k, selection, profile, stability, labels, metrics)


def silhouette_of(model: Pipeline, X: pd.DataFrame, seed: int, sample_size: int = 5000) -> float:
    """Silhouette of a fitted clusterer's labels in its own transformed space (for champion comparison)."""
    sample = X.sample(n=min(sample_size, len(X)), random_state=seed)
    labels = model.predict(sample)
    if len(np.unique(labels)) < 2:
        return -1.0
    return float(silhouette_score(model.named_steps["prep"].transform(sample), labels, random_state=seed))
