-- Databases beside `dagster` (the Dagster instance): MLflow's backend store and the DuckLake catalog.
CREATE DATABASE mlflow;
CREATE DATABASE lake;
