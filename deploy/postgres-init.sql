-- Databases beside Airflow's own (POSTGRES_DB=airflow): MLflow's backend store and the dbt warehouse.
CREATE DATABASE mlflow;
CREATE DATABASE warehouse;
