"""Routes for models, retraining runs, drift, alerts, performance and metrics."""

from __future__ import annotations

import datetime as dt
import tempfile
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from ibf_serve.errors import ApiError
from ibf_serve.schemas import RetrainRequest


def add(app: FastAPI, services, instruments, auth) -> None:
    from ibf_serve.stored import jsonable as _jsonable
    from ibf_serve.stored import records as _records

    settings = services.settings

    def version_or_404(version: str):
        found = [v for v in services.versions() if v.version == version]
        if not found:
            raise ApiError(404, f"model version {version[:20]!r} is not registered")
        return found[0]

    @app.get("/models", dependencies=auth, tags=["models"])
    def models() -> dict[str, Any]:
        """Registered versions, oldest cut-off first."""
        return {"name": settings.model_name, "versions": [_version_summary(v, settings) for v in services.versions()]}

    @app.get("/models/{version}", dependencies=auth, tags=["models"])
    def model(version: str) -> dict[str, Any]:
        """One version: cut-off, members, ensemble weights, validation metrics per horizon, feature importance by group
        (``importance``: permutation rank-IC drop / MSE rise per member and horizon, LightGBM gain, TFT selection
        weights; null for a bundle trained without it), device, digest, run."""
        from ibf_core.forecasts import model_facts

        chosen = version_or_404(version)
        with tempfile.TemporaryDirectory() as tmp:
            facts = model_facts(settings.mlflow_uri, chosen, tmp)
        return _jsonable({**facts, "mlflow_run": _run_link(chosen, settings)})

    @app.post("/retrain", dependencies=auth, status_code=202, tags=["runs"])
    def retrain(body: RetrainRequest) -> dict[str, Any]:
        """Submit a trained_models run to the Dagster instance (queued, run by the daemon, GPU tags)."""
        from ibf_serve.retrain import submit_retrain

        run_id = submit_retrain(services, body.cutoff)
        instruments.retrains_requested.inc()
        return {"run_id": run_id, "url": f"/runs/{run_id}", "dagster_url": f"{settings.dagster_url.rstrip('/')}/runs/{run_id}"}

    @app.get("/runs/{run_id}", dependencies=auth, tags=["runs"])
    def run(run_id: str) -> dict[str, Any]:
        """A Dagster run's status."""
        record = services.instance().get_run_record_by_id(run_id) if _uuid_like(run_id) else None
        if record is None:
            raise ApiError(404, f"run {run_id[:40]!r} not found")
        r = record.dagster_run
        return _jsonable({
            "run_id": r.run_id, "status": r.status.value, "job": r.job_name,
            "assets": sorted(k.to_user_string() for k in (r.asset_selection or ())),
            "partition": r.tags.get("dagster/partition"), "tags": {k: v for k, v in r.tags.items() if k.startswith("ibf/")},
            "created": dt.datetime.fromtimestamp(record.create_timestamp.timestamp(), dt.timezone.utc),
            "started": _ts(record.start_time), "ended": _ts(record.end_time),
        })

    @app.get("/drift", dependencies=auth, tags=["monitoring"])
    def drift() -> dict[str, Any]:
        """The retrain rule's status on the newest drift-scored session and the breached detectors per symbol."""
        from ibf_core.forecasts import drift_status
        from ibf_core.monitoring.scores import DriftPolicy

        return _jsonable(drift_status(services.store, list(settings.universe), DriftPolicy.from_settings(settings)))

    @app.get("/alerts", dependencies=auth, tags=["monitoring"])
    def alerts(since: dt.datetime | None = Query(None, description="Only alerts raised at or after this time (ISO 8601)"),
               limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        """Stored alerts (failed checks), newest first."""
        import pandas as pd

        from ibf_core.monitoring.alerts import read_alerts

        frame = read_alerts(services.store)
        if since is not None:
            ts = pd.Timestamp(since)
            frame = frame[frame["raised_at"] >= (ts.tz_localize("UTC") if ts.tzinfo is None else ts)]
        frame = frame.sort_values("raised_at", ascending=False).head(limit)
        return {"alerts": _records(frame)}

    @app.get("/performance", dependencies=auth, tags=["monitoring"])
    def performance() -> dict[str, Any]:
        """Pooled rolling MASE, MAE, DA, rank IC and coverage per horizon of matured forecasts."""
        table = services.performance()
        as_of = table["as_of"].iloc[0] if len(table) else None
        return {"window_sessions": settings.drift_performance_sessions, "as_of": _jsonable(as_of),
                "horizons": _records(table.drop(columns="as_of"))}

    metrics_deps = [] if settings.api_metrics_public else auth[:1]  # the key only: metrics serve without a warehouse

    @app.get("/metrics", dependencies=metrics_deps, tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(instruments.exposition(), media_type=CONTENT_TYPE_LATEST)


def _version_summary(v, settings) -> dict[str, Any]:
    return {"version": v.version, "cutoff": v.cutoff.isoformat(), "run_id": v.run_id, "manifest_sha256": v.manifest_sha256,
            "mlflow_run": _run_link(v, settings)}


def _run_link(v, settings) -> str:
    """The version's page on the MLflow server, or relative to an MLflow UI over the local store."""
    uri = settings.mlflow_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/models/{v.name}/versions/{v.version}"
    return f"/#/experiments/runs/{v.run_id}"  # relative to the MLflow UI (mlflow ui --backend-store-uri ...)


def _uuid_like(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


def _ts(value) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).isoformat()
