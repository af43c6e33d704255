"""Retraining through the Dagster instance and the status of its runs (tag ``runs``)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Request

from ibf_serve.errors import ApiError
from ibf_serve.retrain import submit_retrain
from ibf_serve.routes.deps import AUTH, api_state
from ibf_serve.schemas import KEYED, RetrainRequest, error_responses
from ibf_serve.stored import jsonable

router = APIRouter(dependencies=AUTH, tags=["runs"])


@router.post("/retrain", status_code=202, responses=error_responses(*KEYED, 400, 404, 422))
def retrain(body: RetrainRequest, request: Request) -> dict[str, Any]:
    """Submit a trained_models run to the Dagster instance (queued, run by the daemon, GPU tags)."""
    api = api_state(request)
    run_id = submit_retrain(api.services, body.cutoff)
    api.instruments.retrains_requested.inc()
    return {"run_id": run_id, "url": f"/runs/{run_id}", "dagster_url": f"{api.settings.dagster_url.rstrip('/')}/runs/{run_id}"}


@router.get("/runs/{run_id}", responses=error_responses(*KEYED, 404, 422))
def run(run_id: str, request: Request) -> dict[str, Any]:
    """A Dagster run's status."""
    api = api_state(request)
    record = api.services.instance().get_run_record_by_id(run_id) if _uuid_like(run_id) else None
    if record is None:
        raise ApiError(404, f"run {run_id[:40]!r} not found")
    r = record.dagster_run
    return jsonable({
        "run_id": r.run_id, "status": r.status.value, "job": r.job_name,
        "assets": sorted(k.to_user_string() for k in (r.asset_selection or ())),
        "partition": r.tags.get("dagster/partition"), "tags": {k: v for k, v in r.tags.items() if k.startswith("ibf/")},
        "created": dt.datetime.fromtimestamp(record.create_timestamp.timestamp(), dt.timezone.utc),
        "started": _ts(record.start_time), "ended": _ts(record.end_time),
    })


def _uuid_like(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


def _ts(value) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).isoformat()
