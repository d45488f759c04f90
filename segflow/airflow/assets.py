"""Airflow Assets that chain the DAGs: build -> score, train -> score."""

from airflow.sdk import Asset

USER_FEATURES = Asset("segflow.marts.user_features")
CHAMPION_MODELS = Asset("segflow.mlflow.champion_models")
USER_SCORES = Asset("segflow.marts.user_scores")
