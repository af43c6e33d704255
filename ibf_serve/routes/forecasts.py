"""Stored and fresh forecasts, rankings and a symbol's forecast history (tag ``forecasts``).

``/predict`` and ``/rankings`` are coroutines: a plain ``def`` would cost a thread hop per request. Anything that
may read files runs in the thread pool."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

import ibf_core.forecasts as core_forecasts  # looked up per call: a test patches the module's functions
from ibf_core.forecasts import ForecastNotFound
from ibf_core.models import HORIZONS, ModelDataError, ModelLoadError
from ibf_core.settings import normalize_symbol
from ibf_core.streaming.live_prices import against_live_prices, newest_live_prices
from ibf_serve.errors import ApiError
from ibf_serve.routes.deps import AUTH, ApiState, api_state
from ibf_serve.schemas import HORIZON_SCHEMA, KEYED, SYMBOL_SCHEMA, PredictRequest, StrictDate, error_responses, symbol_ok
from ibf_serve.stored import jsonable, records

router = APIRouter(dependencies=AUTH, tags=["forecasts"])


@router.post("/predict", responses=error_responses(*KEYED, 400, 404, 422))
async def predict(body: PredictRequest, request: Request) -> Response:
    """Forecasts of symbols x horizons: stored (the newest origin, or ``as_of``) or computed now (``fresh``)."""
    api = api_state(request)
    services, instruments = api.services, api.instruments
    index = await _newest_index(api)
    symbols = _check_symbols(api, body.symbols, index.symbols if index is not None else frozenset())
    horizons = _check_horizons(body.horizons)
    mode = "fresh" if body.fresh else "stored"
    start = time.perf_counter()
    if not body.fresh and not body.live_price and index is not None and body.as_of in (None, index.as_of):
        found = index.select(symbols, horizons)  # the common request: answered from memory
        if not found.parts:
            raise _not_found(ForecastNotFound(f"no stored predictions on origin {index.as_of} for the requested symbols"))
        instruments.prediction_latency.labels(mode).observe(time.perf_counter() - start)
        instruments.predictions.labels(mode).inc(len(found.parts))
        return _json_bytes(found.body({"mode": mode}, "predictions"))
    try:
        if body.fresh:
            await run_in_threadpool(services.warmer.wait_idle)  # a warm-up in progress fills the cache we read
            versions = await run_in_threadpool(services.versions)
            if not versions:
                raise ApiError(503, "no model is registered: train one first (ibf train)")
            result = await run_in_threadpool(core_forecasts.fresh_forecasts, services.fresh_reads, versions, services.load_bundle,
                                             list(api.settings.universe), symbols, horizons, body.as_of)
        else:
            result = await run_in_threadpool(core_forecasts.stored_forecasts, services.store, symbols, horizons, body.as_of)
    except ForecastNotFound as exc:
        raise _not_found(exc) from None
    except ModelLoadError as exc:
        raise ApiError(503, "the model cannot be used for fresh predictions: " + _model_problem(exc)) from None
    except ModelDataError as exc:
        raise ApiError(422, _first_line(exc)) from None
    frame = result.frame
    if body.live_price:
        frame = await run_in_threadpool(_on_live_prices, api, frame)
    instruments.prediction_latency.labels(mode).observe(time.perf_counter() - start)
    instruments.predictions.labels(mode).inc(len(frame))
    # A JSONResponse straight away: FastAPI's jsonable_encoder would walk every value a second time.
    return JSONResponse({"as_of": result.as_of.isoformat(), "mode": mode,
                         "model_version": result.model_versions[-1] if result.model_versions else None,
                         "predictions": records(frame)})


@router.get("/rankings", responses=error_responses(*KEYED, 404, 422))
async def rankings(request: Request, horizon: int = Query(5, description="Sessions ahead", json_schema_extra=HORIZON_SCHEMA),
                   top: int = Query(20, ge=1, le=10000),
                   as_of: StrictDate | None = Query(None, description="Origin session; default the newest")) -> Response:
    """The cross-sectional ranking (1 = highest expected return) of an origin at one horizon."""
    api = api_state(request)
    _check_horizons([horizon])
    index = await _newest_index(api)
    if index is not None and as_of in (None, index.as_of):
        found = index.top(horizon, top)
        if not found.parts:
            raise _not_found(ForecastNotFound(f"no stored predictions on origin {index.as_of} at horizon {horizon}"))
        return _json_bytes(found.body({"horizon": horizon}, "ranking"))
    try:
        result = await run_in_threadpool(core_forecasts.ranking, api.services.store, horizon, top, as_of)
    except ForecastNotFound as exc:
        raise _not_found(exc) from None
    return JSONResponse({"as_of": result.as_of.isoformat(), "horizon": horizon, "model_version": result.model_versions[-1],
                         "ranking": records(result.frame)})


@router.get("/forecasts/{symbol}", responses=error_responses(*KEYED, 404, 422))
def forecasts(request: Request, symbol: str = Path(..., description="A served symbol (else 404)", json_schema_extra=SYMBOL_SCHEMA),
              start: StrictDate | None = Query(None, description="First origin (inclusive)"),
              end: StrictDate | None = Query(None, description="Last origin (inclusive); before start: no rows")) -> dict[str, Any]:
    """A symbol's stored forecasts with realized outcomes where matured (``forecast_outcomes``)."""
    api = api_state(request)
    index = api.services.served.index()
    (name,) = _check_symbols(api, [symbol], index.symbols if index is not None else frozenset())
    frame = core_forecasts.forecast_history(api.services.store, name, start, end)
    return {"symbol": name, "start": jsonable(start), "end": jsonable(end), "forecasts": records(frame)}


async def _newest_index(api: ApiState):
    """The newest origin's rendered forecasts (read again in the thread pool only after a write)."""
    ready, index = api.services.served.without_waiting()
    return index if ready else await run_in_threadpool(api.services.served.index)


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _on_live_prices(api: ApiState, frame):
    prices = newest_live_prices(api.services.store, frame["symbol"].unique().tolist())
    return against_live_prices(frame, prices, max_age_s=api.settings.live_price_max_age_seconds)


def _check_symbols(api: ApiState, raw: list[str], stored: frozenset[str] = frozenset()) -> list[str]:
    """Normalized, deduplicated symbols, each configured (``IBF_UNIVERSE``) or in ``stored``: 422 naming the first
    malformed one (the document's pattern), 404 naming the unknown ones."""
    limit = api.settings.api_max_symbols
    if len(raw) > limit:
        raise ApiError(422, f"symbols: {len(raw)} symbols asked, at most {limit} allowed (IBF_API_MAX_SYMBOLS)")
    out = []
    for s in raw:
        try:
            if not symbol_ok(s):  # exactly the pattern the document declares (no stripping, no Unicode case folds)
                raise ValueError(s)
            out.append(normalize_symbol(s))
        except ValueError:
            raise ApiError(422, f"symbols: {s[:20]!r} is not a valid symbol") from None
    unknown = sorted(set(out) - api.universe - stored)
    if unknown:
        raise ApiError(404, f"symbols: unknown symbol(s) {', '.join(unknown[:10])}")
    return list(dict.fromkeys(out))


def _check_horizons(raw: list[int]) -> list[int]:
    bad = [h for h in raw if h not in HORIZONS]
    if bad:
        raise ApiError(422, f"horizons: {bad[0]} is not a forecast horizon (use {', '.join(map(str, HORIZONS))})")
    return sorted(set(raw))


def _not_found(exc: Exception) -> ApiError:
    return ApiError(404, str(exc))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__


def _model_problem(exc: Exception) -> str:
    """What went wrong with a bundle, without the cache path in the message."""
    text = _first_line(exc)
    for marker in ("checksum mismatch", "manifest digest differs", "files differ from the manifest", "cannot download", "no manifest"):
        if marker in text:
            return marker + " (the bundle changed after training or is missing; see the server log)"
    return "its bundle could not be loaded (see the server log)"
