import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from ml.churn import lift_top_decile, risk_band, train_churn
from ml.clustering import train_clustering
from ml.features import MODEL_FEATURES


def synthetic_features(n_per_group=150, seed=0):
    """Three behaviourally distinct groups with the user_features columns the models read."""
    rng = np.random.default_rng(seed)
    groups = []
    for g, (freq, spend, engage, age, device) in enumerate([(12, 900, 85, 50, "desktop"), (1, 40, 10, 45, "mobile"), (4, 150, 50, 24, "mobile")]):
        n = n_per_group
        groups.append(pd.DataFrame({
            "user_id": [f"G{g}_{i}" for i in range(n)], "group": g,
            "recency_days": rng.poisson(5 if g == 0 else 80 if g == 1 else 20, n),
            "frequency_365d": rng.poisson(freq, n), "monetary_365d": rng.gamma(4, spend / 4, n),
            "lifetime_orders": rng.poisson(freq * 2, n) + 1, "lifetime_spend": rng.gamma(4, spend / 2, n),
            "orders_30d": rng.poisson(freq / 12, n), "orders_90d": rng.poisson(freq / 4, n),
            "active_days_30d": rng.poisson(engage / 10, n), "sessions_30d": rng.poisson(engage / 6, n),
            "email_opens_30d": rng.poisson(engage / 20, n), "email_clicks_30d": rng.poisson(engage / 40, n),
            "engagement_score": np.clip(rng.normal(engage, 5, n), 0, 100), "intent_score_30d": rng.gamma(2, engage / 20, n),
            "tenure_days": rng.integers(30, 900, n), "top_category_share": rng.uniform(0.2, 1, n),
            "age": rng.normal(age, 3, n).round(), "income_band": "50-100k", "preferred_device": device,
            "age_band": "35-44", "country": "DE", "cart_abandoned_30d": rng.random(n) < 0.3, "has_email_consent": True,
        }))
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
    assert set(result.candidates) == {"logistic_regression", "gradient_boosting"}
    proba = result.model.predict_proba(frame[MODEL_FEATURES])[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()
    assert result.importance.iloc[0]["feature"] == "recency_days"


def test_churn_refuses_single_class_data():
    frame = synthetic_features(n_per_group=30)
    frame["churned"] = False
    with pytest.raises(ValueError, match="both classes"):
        train_churn(frame)


def test_metric_helpers():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    perfect = y.astype(float)
    assert lift_top_decile(y, perfect) == pytest.approx(10.0)
    assert list(risk_band(np.array([0.1, 0.3, 0.59, 0.6, 0.99]), 0.3, 0.6)) == ["low", "medium", "medium", "high", "high"]


def test_champion_challenger_uses_aliases(tmp_path, make_settings):
    from sklearn.linear_model import LogisticRegression

    from ml.registry import configure_mlflow, current_champion, decide_alias

    settings = make_settings(tmp_path, tmp_path)
    mlflow = configure_mlflow(settings)
    client = mlflow.MlflowClient()
    X, y = np.arange(20).reshape(-1, 1).astype(float), np.array([0, 1] * 10)
    versions = []
    for _ in range(3):
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="m", registered_model_name="test_model",
                                            serialization_format="cloudpickle")
            versions.append(str(info.registered_model_version))
    first = decide_alias(client, "test_model", versions[0], 0.80, None, tolerance=0.0)
    assert first.alias == "champion"
    worse = decide_alias(client, "test_model", versions[1], 0.79, 0.80, tolerance=0.0)
    assert worse.alias == "challenger" and "does not beat" in worse.reason
    assert str(current_champion(client, "test_model").version) == versions[0]
    better = decide_alias(client, "test_model", versions[2], 0.85, 0.80, tolerance=0.01)
    assert better.alias == "champion" and str(current_champion(client, "test_model").version) == versions[2]
    assert client.get_model_version("test_model", versions[1]).tags["promotion_decision"] == "challenger"
