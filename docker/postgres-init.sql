-- MLflow's backend store: its own database on the same server (the Dagster instance uses `dagster`).
CREATE DATABASE mlflow;
