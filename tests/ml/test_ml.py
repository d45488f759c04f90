from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segflow.ml import churn
from segflow.ml.churn import _candidate, lift_top_decile, permutation_importance, risk_band, train_churn
from segflow.ml.clustering import train_clustering
from segflow.ml.features import MODEL_FEATURES, prepare


def synthetic_features(n_per_group=150, seed=0):
    """Three behaviourally distinct groups with the user_features columns the models read."""
    rng = np.random.default_rng(seed)
    groups = []
    for g, (freq, spend, engage, age, device) in enumerate(
        [(12, 900, 85, 50, "desktop"), (1, 40, 10, 45, "mobile"), (4, 150, 50, 24, "mobile")]
    ):
        n = n_per_group
        groups.append(
            pd.DataFrame(
                {
                    "user_id": [f"G{g}_{i}" for i in range(n)],
                    "group": g,
                    "recency_days": rng.poisson(5 if g == 0 else 80 if g == 1 else 20, n),
                    "frequency_365d": rng.poisson(freq, n),
                    "monetary_365d": rng.gamma(4, spend / 4, n),
                    "lifetime_orders": rng.poisson(freq * 2, n) + 1,
                    "lifetime_spend": rng.gamma(4, spend / 2, n),
                    "orders_30d": rng.poisson(freq / 12, n),
                    "orders_90d": rng.poisson(freq / 4, n),
                    "active_days_30d": rng.poisson(engage / 10, n),
                    "sessions_30d": rng.poisson(engage / 6, n),
                    "email_opens_30d": rng.poisson(engage / 20, n),
                    "email_clicks_30d": rng.poisson(engage / 40, n),
                    "engagement_score": np.clip(rng.normal(engage, 5, n), 0, 100),
                    "intent_score_30d": rng.gamma(2, engage / 20, n),
                    "tenure_days": rng.integers(30, 900, n),
                    "top_category_share": rng.uniform(0.2, 1, n),
                    "age": rng.normal(age, 3, n).round(),
                    "income_band": "50-100k",
                    "preferred_device": device,
                    "age_band": "35-44",
                    "country": "DE",
                    "cart_abandoned_30d": rng.random(n) < 0.3,
                    "has_email_consent": True,
                }
            )
        )
    return pd.concat(groups, ignore_index=True)


def test_clustering_recovers_planted_groups_and_names_them():
    frame = synthetic_features()
    result = train_clustering(frame, k_min=2, k_max=5, sample_size=2000, seed=1)
    assert result.k == 3
    assert adjusted_rand_score(frame["group"], result.labels) > 0.9
    assert result.profile["persona"].is_unique and result.profile["size"].sum() == len(frame)
    assert all(result.profile["description"].str.contains("users"))
    assert 0 <= result.stability_ari <= 1


def test_churn_learns_a_recency_driven_label():
    frame = synthetic_features(n_per_group=300, seed=3)
    rng = np.random.default_rng(4)
    # Recency independent of the groups, so no other feature can stand in for it.
    frame["recency_days"] = rng.integers(0, 120, len(frame))
    p = 1 / (1 + np.exp(-(frame["recency_days"] - 40) / 8))
    frame["churned"] = rng.random(len(frame)) < p
    result = train_churn(frame, seed=0)
    assert result.metrics["roc_auc"] > 0.85
    assert set(result.candidates) == {"logistic_regression", "gradient_boosting", "ensemble"}
    proba = result.model.predict_proba(prepare(frame, MODEL_FEATURES))[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()
    assert result.importance.iloc[0]["feature"] == "recency_days"


def test_permutation_importance_equals_sklearns_in_one_prediction():
    """The batched version shuffles exactly as sklearn does: same losses, to rounding, for a model of mixed types."""
    from sklearn.inspection import permutation_importance as sklearn_importance

    frame = synthetic_features(n_per_group=60, seed=5)
    rng = np.random.default_rng(6)
    frame["recency_days"] = rng.integers(0, 120, len(frame))  # independent of the groups: no stand-in for it
    y = (rng.random(len(frame)) < 1 / (1 + np.exp(-(frame["recency_days"] - 40) / 8))).astype(int)
    X = prepare(frame, MODEL_FEATURES)
    # The spline logistic regression: numeric, boolean and categorical inputs, and quick to call 100 times.
    model = _candidate("logistic_regression", 0, X).fit(X, y)
    ours = permutation_importance(model, X, y, n_repeats=3, seed=7).set_index("feature").loc[X.columns]
    theirs = sklearn_importance(model, X, y, scoring="roc_auc", n_repeats=3, random_state=7)
    np.testing.assert_allclose(ours["importance_mean"], theirs.importances_mean, atol=1e-12)
    np.testing.assert_allclose(ours["importance_std"], theirs.importances_std, atol=1e-12)
    assert ours["importance_mean"].idxmax() == "recency_days" and ours["importance_mean"].max() > 0.05


def test_reason_codes_name_the_features_that_raise_each_users_risk(monkeypatch):
    """Occlusion in batches of stacked copies gives what one prediction per feature gives: each feature alone set
    to the reference's median (or most frequent category), the largest rises first, none below half a point."""
    frame = synthetic_features(n_per_group=40, seed=8)
    rng = np.random.default_rng(9)
    frame["recency_days"] = rng.integers(0, 120, len(frame))
    y = (rng.random(len(frame)) < 1 / (1 + np.exp(-(frame["recency_days"] - 40) / 8))).astype(int)
    X = prepare(frame, MODEL_FEATURES)
    model = _candidate("logistic_regression", 0, X).fit(X, y)
    at_risk = X.iloc[:25]
    monkeypatch.setattr(churn, "REASON_BATCH_ROWS", 100)  # several batches of a few users each
    codes = churn.reason_codes(model, at_risk, reference=X)
    # Users already at the typical value are not predicted again (their rise is exactly 0): some are here.
    assert any(churn._is_value(at_risk[c], float(X[c].median())).any() for c in ("orders_30d", "page_views_7d"))
    base = model.predict_proba(at_risk)[:, 1]
    for i, code in enumerate(codes):
        expected = []
        for col in at_risk.columns:
            if X[col].isna().all():
                continue
            changed = at_risk.iloc[[i]].copy()
            changed[col] = X[col].mode().iloc[0] if col in churn.CATEGORICAL_FEATURES else float(X[col].median())
            expected.append((base[i] - model.predict_proba(changed)[0, 1], col))
        top = [(rise, col) for rise, col in sorted(expected, key=lambda t: -t[0])[:3] if rise >= 0.005]
        parts = [part for part in (code or "").split("; ") if part]
        assert [part.split("=")[0] for part in parts] == [col for _, col in top]
        for part, (rise, _) in zip(parts, top, strict=True):
            assert part.endswith(f"(+{rise:.2f})")
    assert sum(code is not None and code.startswith("recency_days=") for code in codes) >= 5


def test_churn_refuses_single_class_data():
    frame = synthetic_features(n_per_group=30)
    frame["churned"] = False
    with pytest.raises(ValueError, match="both classes"):
        train_churn(frame)


def test_metric_helpers():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    perfect = y.astype(float)
    assert lift_top_decile(y, perfect) == pytest.approx(10.0)
    assert list(risk_band(np.array([0.1, 0.3, 0.59, 0.6, 0.99]), 0.3, 0.6)) == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]


def test_champion_challenger_uses_aliases(tmp_path, make_settings):
    from sklearn.linear_model import LogisticRegression

    from segflow.ml.registry import configure_mlflow, current_champion, decide_alias

    settings = make_settings(tmp_path, tmp_path)
    mlflow = configure_mlflow(settings)
    client = mlflow.MlflowClient()
    X, y = np.arange(20).reshape(-1, 1).astype(float), np.array([0, 1] * 10)
    versions = []
    for _ in range(3):
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                LogisticRegression().fit(X, y),
                name="m",
                registered_model_name="test_model",
                serialization_format="cloudpickle",
            )
            versions.append(str(info.registered_model_version))
    first = decide_alias(client, "test_model", versions[0], 0.80, None, tolerance=0.0)
    assert first.alias == "champion"
    worse = decide_alias(client, "test_model", versions[1], 0.79, 0.80, tolerance=0.0)
    assert worse.alias == "challenger" and "does not beat" in worse.reason
    assert str(current_champion(client, "test_model").version) == versions[0]
    better = decide_alias(client, "test_model", versions[2], 0.85, 0.80, tolerance=0.01)
    assert better.alias == "champion" and str(current_champion(client, "test_model").version) == versions[2]
    assert client.get_model_version("test_model", versions[1]).tags["promotion_decision"] == "challenger"


def test_clustering_compares_algorithms_and_k_and_records_the_choice():
    frame = synthetic_features(n_per_group=120, seed=5)
    result = train_clustering(frame, k_min=2, k_max=4, sample_size=2000, seed=2)
    sel = result.selection
    assert set(sel["algorithm"]) == {"kmeans", "minibatch_kmeans", "gaussian_mixture"}
    assert set(sel["k"]) == {2, 3, 4}
    assert sel["bic"].notna().sum() == 3, "BIC is recorded for the Gaussian mixtures"
    chosen = sel[sel["chosen"]]
    assert len(chosen) == 1 and chosen.iloc[0]["algorithm"] == result.algorithm and chosen.iloc[0]["k"] == result.k
    assert result.stability_ari >= 0.6 and adjusted_rand_score(frame["group"], result.labels) > 0.9
    # The saved pipeline carries its preprocessing: raw feature columns in, cluster ids out.
    assert (result.model.predict(frame) == result.labels).all()


def test_persona_names_are_unique_readable_and_follow_the_profile():
    from segflow.ml.clustering import name_personas

    profile = pd.DataFrame(
        {
            "cluster_id": [0, 1, 2],
            "size": [10, 20, 30],
            "share": [1 / 6, 1 / 3, 1 / 2],
            "z_monetary_365d": [2.0, 2.0, -0.1],
            "z_age": [1.0, 1.0, -1.5],
            "z_tenure_days": [0.9, -0.8, 0.0],
        }
    )
    names, descriptions = name_personas(profile)
    assert names[0] != names[1], "same two top traits: a third one tells them apart"
    assert names[0].startswith("Mature") and "Big Spenders" in names[0]
    assert names[2] == "Young Customers"
    assert descriptions[1].startswith("20 users (33%)") and "monetary 365d above average (+2.0 sd)" in descriptions[1]


def test_expected_auc_is_the_auc_of_certain_labels_and_bayes_is_best():
    from sklearn.metrics import roc_auc_score

    from segflow.ml.churn import expected_auc

    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    score = labels + rng.normal(0, 0.8, 500)
    assert expected_auc(labels.astype(float), score) == pytest.approx(roc_auc_score(labels, score))
    true_p = rng.uniform(0, 1, 2000)
    noisy = true_p + rng.normal(0, 0.3, 2000)
    bayes = expected_auc(true_p, true_p)
    assert expected_auc(true_p, noisy) < bayes
    # It is the mean AUC over draws of the outcomes.
    draws = [roc_auc_score(rng.random(2000) < true_p, true_p) for _ in range(200)]
    assert bayes == pytest.approx(np.mean(draws), abs=0.003)


def test_churn_holds_out_the_latest_snapshot_and_reports_baselines():
    frames = []
    for i, day in enumerate(["2026-05-01", "2026-05-22", "2026-06-12"]):
        f = synthetic_features(n_per_group=150, seed=10 + i)
        rng = np.random.default_rng(20 + i)
        f["recency_days"] = rng.integers(0, 120, len(f))
        f["churned"] = rng.random(len(f)) < 1 / (1 + np.exp(-(f["recency_days"] - 40) / 8))
        f["as_of"] = pd.Timestamp(day)
        frames.append(f)
    training = pd.concat(frames, ignore_index=True)
    result = train_churn(training, seed=0)
    assert result.split.startswith("time: snapshot 2026-06-12 held out")
    assert result.extra["holdout_rows"] == 450 and result.extra["train_rows"] == 900
    assert len(result.holdout) == 450
    assert set(result.baselines) == {"recency_only", "rfm_logistic_regression"}
    assert result.baselines["recency_only"]["roc_auc"] > 0.85  # recency drives this label
    assert np.isnan(result.baselines["recency_only"]["brier"]), "a raw score has no Brier score"
    assert result.metrics["roc_auc"] >= result.baselines["recency_only"]["roc_auc"] - 0.05


def test_input_example_belongs_to_nobody():
    from segflow.ml.features import prepare, synthetic_example

    X = prepare(synthetic_features(n_per_group=50, seed=8), MODEL_FEATURES)
    example = synthetic_example(X)
    assert list(example.columns) == list(X.columns) and len(example) == 5
    assert example.merge(X, how="inner").empty, "no example row is a user's row"


def test_a_value_a_rounding_error_above_a_bin_edge_stays_in_the_edge_bin():
    """PostgreSQL and DuckDB (or two runs of one with parallel sums) give a feature in different last bits: a user
    whose value sits on a decile edge must not change bins, and the PSI must not change, for that."""
    from segflow.ml.monitoring import feature_psi, reference_profile

    train = pd.DataFrame({"spend": [0.1 + 0.2 * i for i in range(101)]})  # deciles fall on values
    ref = reference_profile(train)
    edge = ref["spend"]["edges"][3]
    noisy = train.assign(spend=train["spend"].where(train["spend"] != edge, np.nextafter(edge, np.inf)))
    assert (noisy["spend"] != train["spend"]).sum() == 1
    assert feature_psi(ref, noisy)["spend"] == feature_psi(ref, train)["spend"]
    moved = train.assign(spend=train["spend"].where(train["spend"] != edge, edge * 1.001))
    assert feature_psi(ref, moved)["spend"] > feature_psi(ref, train)["spend"]  # a real move still counts


def test_psi_is_zero_for_the_same_distribution_and_flags_a_shift():
    from segflow.ml.monitoring import feature_psi, psi, reference_profile

    rng = np.random.default_rng(1)
    train = pd.DataFrame({"recency_days": rng.exponential(30, 5000), "country": rng.choice(["DE", "FR"], 5000)})
    same = pd.DataFrame({"recency_days": rng.exponential(30, 5000), "country": rng.choice(["DE", "FR"], 5000)})
    shifted = pd.DataFrame({"recency_days": rng.exponential(60, 5000), "country": rng.choice(["DE", "FR", "GB"], 5000)})
    ref = reference_profile(train)
    assert ref["recency_days"]["kind"] == "numeric" and len(ref["recency_days"]["edges"]) == 9
    stable, moved = feature_psi(ref, same), feature_psi(ref, shifted)
    assert stable["recency_days"] < 0.02 and stable["country"] < 0.01
    assert moved["recency_days"] > 0.2 and moved["country"] > 0.2
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_training_rows_are_capped_by_a_seeded_sample_that_keeps_every_snapshot():
    from segflow.ml.train import cap_rows

    training = pd.DataFrame(
        {"as_of": np.repeat(["2026-05-01", "2026-05-22", "2026-06-12"], 1000), "x": np.arange(3000)}
    )
    capped = cap_rows(training, 600, seed=7)
    assert len(capped) == 600 and capped.index.is_monotonic_increasing
    assert set(capped["as_of"]) == set(training["as_of"]) and capped["as_of"].value_counts().min() > 120
    assert capped.equals(cap_rows(training, 600, seed=7)), "the same seed, the same sample"
    assert cap_rows(training, 0, seed=7) is training and cap_rows(training, 5000, seed=7) is training


@pytest.mark.parametrize("algorithm", ["kmeans", "gaussian_mixture"])
def test_users_with_unknown_features_are_assigned_on_what_is_known(algorithm):
    """A user without tracking consent has no behaviour features: the clusterer is fitted on complete users and
    places the others by the features they have, not at an imputed typical value."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from segflow.ml.clustering import MarginalClusterer

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    X = np.vstack([c + rng.normal(0, 0.5, (200, 2)) for c in centres])
    base = (
        KMeans(3, n_init=4, random_state=0)
        if algorithm == "kmeans"
        else GaussianMixture(3, covariance_type="diag", random_state=0)
    )
    model = MarginalClusterer(base).fit(np.vstack([X, [[np.nan, np.nan]] * 5]))
    full = model.predict(X)
    # Hide the second feature of every user: the first alone separates cluster 1 (x = 6) from the others.
    hidden = X.copy()
    hidden[:, 1] = np.nan
    partial = model.predict(hidden)
    in_second = full == full[200]
    assert (partial[in_second] == full[200]).mean() > 0.95
    assert model.predict(np.array([[np.nan, np.nan]])).shape == (1,), "nothing known: still assigned"


def test_a_logged_model_declares_the_installed_versions_it_needs(tmp_path, make_settings):
    """Declared, not inferred: the requirements pin what is installed, and nothing else (MLflow's inference, run
    under pytest, listed pytest)."""
    from importlib.metadata import version

    import sklearn
    from sklearn.linear_model import LogisticRegression

    from segflow.ml.registry import SKLEARN_MODEL_PACKAGES, configure_mlflow, model_requirements

    requirements = model_requirements(SKLEARN_MODEL_PACKAGES)
    assert f"scikit-learn=={sklearn.__version__}" in requirements and f"segflow=={version('segflow')}" in requirements
    mlflow = configure_mlflow(make_settings(tmp_path, tmp_path))
    X, y = np.arange(20).reshape(-1, 1).astype(float), np.array([0, 1] * 10)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(X, y),
            name="m",
            serialization_format="cloudpickle",
            pip_requirements=requirements,
        )
    lines = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text().split()
    assert sorted(lines) == sorted([f"mlflow=={mlflow.__version__}", *requirements])
    assert not any(line.startswith("pytest") for line in lines)
