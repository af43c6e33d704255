"""Liveness, readiness and the Prometheus exposition (tag ``ops``; no warehouse needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ibf_serve.routes.deps import Api

# Included last, behind the key unless IBF_API_METRICS_PUBLIC (create_app adds the dependency): the metrics
# serve without a warehouse.
metrics_router = APIRouter(tags=["ops"])


@metrics_router.get("/metrics", response_class=Response)
def metrics(api: Api) -> Response:
    """Prometheus exposition."""
    return Response(api.instruments.exposition(), media_type=CONTENT_TYPE_LATEST)
