"""segflow's machine-learning package: personas (clustering), churn, the MLflow registry and scoring.

Features come from the dbt marts only (marts.user_features / user_features_history / ml.churn_training_set);
no feature SQL is re-implemented here. Each model is a scikit-learn Pipeline that carries its own
imputation, scaling and encoding, so scoring applies exactly the transform used in training.
"""
