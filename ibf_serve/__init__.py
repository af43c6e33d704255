"""ibf's REST service: forecasts, models, retraining and Prometheus metrics over ``ibf_core`` (FastAPI)."""
