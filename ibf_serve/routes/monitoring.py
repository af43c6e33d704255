"""Drift, alerts and rolling performance (tag ``monitoring``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from fastapi import APIRouter, Query, Request

from ibf_core.forecasts import drift_status
from ibf_core.monitoring.alerts import read_alerts
from ibf_core.monitoring.scores import DriftPolicy
from ibf_serve.routes.deps import AUTH, api_state
from ibf_serve.schemas import KEYED, DateOrDateTime, error_responses
from ibf_serve.stored import jsonable, records

router = APIRouter(dependencies=AUTH, tags=["monitoring"])


@router.get("/drift", responses=error_responses(*KEYED))
def drift(request: Request) -> dict[str, Any]:
    """The retrain rule's status on the newest drift-scored session and the breached detectors per symbol."""
    api = api_state(request)
    return jsonable(drift_status(api.services.store, list(api.settings.universe), DriftPolicy.from_settings(api.settings)))


@router.get("/alerts", responses=error_responses(*KEYED, 422))
def alerts(request: Request, since: DateOrDateTime | None = Query(None, description="Only alerts raised at or after this time "
                                                                 "(RFC 3339 date-time, or a date: midnight UTC)"),
           limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
    """Stored alerts (failed checks), newest first."""
    api = api_state(request)
    frame = read_alerts(api.services.store)
    if since is not None:
        ts = pd.Timestamp(since)
        frame = frame[frame["raised_at"] >= (ts.tz_localize("UTC") if ts.tzinfo is None else ts)]
    frame = frame.sort_values("raised_at", ascending=False).head(limit)
    return {"alerts": records(frame)}


@router.get("/performance", responses=error_responses(*KEYED))
def performance(request: Request) -> dict[str, Any]:
    """Pooled rolling MASE, MAE, DA, rank IC and coverage per horizon of matured forecasts."""
    api = api_state(request)
    table = api.services.performance()
    as_of = table["as_of"].iloc[0] if len(table) else None
    return {"window_sessions": api.settings.drift_performance_sessions, "as_of": jsonable(as_of),
            "horizons": records(table.drop(columns="as_of"))}
