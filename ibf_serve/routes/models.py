"""Registered model versions (tag ``models``)."""

from __future__ import annotations

import tempfile
from typing import Any

from fastapi import APIRouter, Request

from ibf_core.forecasts import model_facts
from ibf_serve.errors import ApiError
from ibf_serve.routes.deps import AUTH, api_state
from ibf_serve.schemas import KEYED, error_responses
from ibf_serve.stored import jsonable

router = APIRouter(dependencies=AUTH, tags=["models"])


@router.get("/models", responses=error_responses(*KEYED))
def models(request: Request) -> dict[str, Any]:
    """Registered versions, oldest cut-off first."""
    api = api_state(request)
    return {"name": api.settings.model_name, "versions": [_version_summary(v, api.settings) for v in api.services.versions()]}


@router.get("/models/{version}", responses=error_responses(*KEYED, 404, 422))
def model(version: str, request: Request) -> dict[str, Any]:
    """One version: cut-off, members, ensemble weights, validation metrics per horizon, feature importance by group
    (``importance``: permutation rank-IC drop / MSE rise per member and horizon, LightGBM gain, TFT selection
    weights; null for a bundle trained without it), device, digest, run."""
    api = api_state(request)
    chosen = _version_or_404(api, version)
    with tempfile.TemporaryDirectory() as tmp:
        facts = model_facts(api.settings.mlflow_uri, chosen, tmp)
    return jsonable({**facts, "mlflow_run": _run_link(chosen, api.settings)})


def _version_or_404(api, version: str):
    found = [v for v in api.services.versions() if v.version == version]
    if not found:
        raise ApiError(404, f"model version {version[:20]!r} is not registered")
    return found[0]


def _version_summary(v, settings) -> dict[str, Any]:
    return {"version": v.version, "cutoff": v.cutoff.isoformat(), "run_id": v.run_id, "manifest_sha256": v.manifest_sha256,
            "mlflow_run": _run_link(v, settings)}


def _run_link(v, settings) -> str:
    """The version's page on the MLflow server, or relative to an MLflow UI over the local store."""
    uri = settings.mlflow_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/models/{v.name}/versions/{v.version}"
    return f"/#/experiments/runs/{v.run_id}"  # relative to the MLflow UI (mlflow ui --backend-store-uri ...)
