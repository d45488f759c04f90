"""Diagnostic plots logged to MLflow (Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def k_selection(selection: pd.DataFrame, chosen: pd.Series):
    """Silhouette per k for every algorithm (left) and the Gaussian mixtures' BIC (right)."""
    fig, (ax, ax_bic) = plt.subplots(1, 2, figsize=(10, 4))
    for algorithm, group in selection.groupby("algorithm", sort=False):
        ax.plot(group["k"], group["silhouette"], marker="o", label=algorithm)
    ax.scatter(
        [chosen["k"]],
        [chosen["silhouette"]],
        s=160,
        facecolors="none",
        edgecolors="black",
        label=f"chosen: {chosen['algorithm']} k={int(chosen['k'])}",
    )
    ax.set_xlabel("k"), ax.set_ylabel("silhouette (sample)"), ax.legend(fontsize=8)
    ax.set_title("Choosing the number of personas")
    gmm = selection[selection["bic"].notna()]
    if len(gmm):
        ax_bic.plot(gmm["k"], gmm["bic"], marker="s", color="tab:green")
    ax_bic.set_xlabel("k"), ax_bic.set_ylabel("BIC (Gaussian mixture, lower is better)")
    ax_bic.set_title("Gaussian mixture BIC")
    fig.tight_layout()
    return fig


def cluster_profile(profile: pd.DataFrame):
    zcols = [c for c in profile.columns if c.startswith("z_")]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(profile) + 2))
    im = ax.imshow(profile[zcols].to_numpy(), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(zcols)), [c[2:] for c in zcols], rotation=45, ha="right")
    ax.set_yticks(range(len(profile)), [f"{r.persona} ({r.size})" for r in profile.itertuples()])
    fig.colorbar(im, ax=ax, label="mean vs population (sd)")
    ax.set_title("Persona profiles")
    fig.tight_layout()
    return fig


def roc(y: np.ndarray, p: np.ndarray):
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y, p, ax=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_title("Churn ROC (holdout)")
    return fig


def calibration(y: np.ndarray, p: np.ndarray):
    fig, ax = plt.subplots(figsize=(5, 5))
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    ax.plot(mean, frac, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.set_xlabel("predicted probability"), ax.set_ylabel("observed churn rate"), ax.legend()
    ax.set_title("Churn calibration (holdout)")
    return fig


def confusion(y: np.ndarray, p: np.ndarray, threshold: float = 0.5):
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(
        y, (p >= threshold).astype(int), display_labels=["retained", "churned"], ax=ax, colorbar=False
    )
    ax.set_title(f"Confusion matrix (threshold {threshold})")
    return fig


def importance(imp: pd.DataFrame):
    top = imp.head(15).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh(top["feature"], top["importance_mean"], xerr=top["importance_std"])
    ax.set_xlabel("ROC-AUC drop when permuted")
    ax.set_title("Permutation feature importance")
    fig.tight_layout()
    return fig
