"""Liveness, readiness and the Prometheus exposition (tag ``ops``): no key and no warehouse needed, except the
key for ``/metrics`` unless ``IBF_API_METRICS_PUBLIC``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ibf_serve.readiness import readiness
from ibf_serve.routes.deps import api_state
from ibf_serve.schemas import ErrorBody, error_responses
from ibf_serve.stored import jsonable

router = APIRouter(tags=["ops"])


@router.get("/health", responses=error_responses())
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={**error_responses(), 503: {"model": ErrorBody, "description": "Not ready: the error "
            "shape plus the per-part checks and the failing parts"}})
def ready(request: Request) -> JSONResponse:
    """Readiness: warehouse readable, a model registered, the Dagster instance reachable, newest bar age, free disk
    space under IBF_HOME at least IBF_MIN_FREE_MIB."""
    api = api_state(request)
    body, ok = readiness(api.services)
    if not ok:  # the error shape every failure has, plus the per-part detail
        parts = "; ".join(f"{name}: {body['checks'][name].get('message', 'failed')}" for name in body["failing"])
        body = {"error": {"code": "not_ready", "message": f"not ready: {parts}"}, **body}
    return JSONResponse(jsonable(body), status_code=200 if ok else 503)


# A router of its own, included last (the paths keep their order) with the key check unless the metrics are
# public (create_app decides); the metrics serve without a warehouse.
metrics_router = APIRouter(tags=["ops"])


@metrics_router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    api = api_state(request)
    return Response(api.instruments.exposition(), media_type=CONTENT_TYPE_LATEST)
