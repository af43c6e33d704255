"""The REST service: ``create_app(settings)`` builds the FastAPI app; ``serve`` runs it under uvicorn."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from ibf_core.settings import Settings
from ibf_serve import errors
from ibf_serve.auth import KeyRing, RateLimiter, load_digests
from ibf_serve.errors import ApiError
from ibf_serve.metrics import Instruments, PlatformCollector
from ibf_serve.schemas import ERROR_RESPONSES, PredictRequest, RetrainRequest
from ibf_serve.services import Services


def _jsonable(value: Any) -> Any:
    """NaN/inf become null; dates ISO strings; numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and type(value).__name__ in ("NaTType", "NAType"):
        return None
    return value


def _records(frame) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in frame.to_dict("records")]


def create_app(settings: Settings) -> FastAPI:
    """The ibf REST API for ``settings`` (the one entry point: ``ibf serve`` and the tests call it)."""
    from ibf_core.models import HORIZONS

    services = Services(settings)
    keys = KeyRing(load_digests(settings.api_keys, settings.api_keys_file))
    limiter = RateLimiter(settings.api_rate_limit)
    instruments = Instruments()
    from ibf_serve.figures import platform_metrics

    instruments.registry.register(PlatformCollector(lambda: platform_metrics(services), settings.api_metrics_cache_seconds))

    app = FastAPI(title="ibf", version="0.1.0", description="Forecasts, models, retraining and metrics of the ibf platform.",
                  responses=ERROR_RESPONSES)
    app.state.services = services
    scrub = errors.install(app, settings.secret_values())
    if settings.api_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.api_cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    from ibf_serve.middleware import Measure

    # A plain ASGI middleware (not BaseHTTPMiddleware): it costs microseconds, not a task per request.
    app.add_middleware(Measure, instruments=instruments, scrub=scrub)

    def authorized(request: Request) -> str:
        identity = keys.check(request.headers.get("authorization"))
        limiter.hit(identity)
        return identity

    def warehouse_exists() -> None:
        # Warehouse.query would create a missing warehouse; the service only ever reads, so it says 503.
        if not services.store.db_path.exists():
            raise ApiError(503, "the warehouse does not exist yet: run ibf backfill first")

    auth = [Depends(authorized), Depends(warehouse_exists)]
    universe = set(settings.universe)

    def known_symbols() -> set[str]:
        return universe | services.newest.symbols()

    def check_symbols(raw: list[str]) -> list[str]:
        from ibf_core.settings import normalize_symbol

        if len(raw) > settings.api_max_symbols:
            raise ApiError(422, f"symbols: {len(raw)} symbols asked, at most {settings.api_max_symbols} allowed (IBF_API_MAX_SYMBOLS)")
        out = []
        for s in raw:
            try:
                out.append(normalize_symbol(s))
            except ValueError:
                raise ApiError(422, f"symbols: {s[:20]!r} is not a valid symbol") from None
        unknown = sorted(set(out) - known_symbols())
        if unknown:
            raise ApiError(422, f"symbols: unknown symbol(s) {', '.join(unknown[:10])}")
        return list(dict.fromkeys(out))

    def check_horizons(raw: list[int]) -> list[int]:
        bad = [h for h in raw if h not in HORIZONS]
        if bad:
            raise ApiError(422, f"horizons: {bad[0]} is not a forecast horizon (use {', '.join(map(str, HORIZONS))})")
        return sorted(set(raw))

    def not_found(exc: Exception) -> ApiError:
        return ApiError(404, str(exc))

    # ----- liveness and readiness ------------------------------------------------------------------------
    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    def ready() -> JSONResponse:
        """Readiness: warehouse readable, a model registered, the Dagster instance reachable, newest bar age."""
        from ibf_serve.readiness import readiness

        body, ok = readiness(services)
        if not ok:  # the error shape every failure has, plus the per-part detail
            parts = "; ".join(f"{name}: {body['checks'][name].get('message', 'failed')}" for name in body["failing"])
            body = {"error": {"code": "not_ready", "message": f"not ready: {parts}"}, **body}
        return JSONResponse(_jsonable(body), status_code=200 if ok else 503)

    # ----- forecasts -------------------------------------------------------------------------------------
    @app.post("/predict", dependencies=auth, tags=["forecasts"])
    def predict(body: PredictRequest) -> JSONResponse:
        """Forecasts of symbols x horizons: stored (the newest origin, or ``as_of``) or computed now (``fresh``)."""
        from ibf_core.forecasts import ForecastNotFound, fresh_forecasts, stored_forecasts
        from ibf_core.models import ModelDataError, ModelLoadError

        symbols, horizons = check_symbols(body.symbols), check_horizons(body.horizons)
        mode = "fresh" if body.fresh else "stored"
        start = time.perf_counter()
        try:
            if body.fresh:
                versions = services.versions()
                if not versions:
                    raise ApiError(503, "no model is registered: train one first (ibf train)")
                result = fresh_forecasts(services.store, versions, services.load_bundle, list(settings.universe),
                                         symbols, horizons, body.as_of)
            else:
                result = stored_forecasts(services.store, symbols, horizons, body.as_of, services.newest)
        except ForecastNotFound as exc:
            raise not_found(exc) from None
        except ModelLoadError as exc:
            raise ApiError(503, "the model cannot be used for fresh predictions: " + _model_problem(exc)) from None
        except ModelDataError as exc:
            raise ApiError(422, _first_line(exc)) from None
        instruments.prediction_latency.labels(mode).observe(time.perf_counter() - start)
        instruments.predictions.labels(mode).inc(len(result.frame))
        # A JSONResponse straight away: FastAPI's jsonable_encoder would walk every value a second time.
        return JSONResponse({"as_of": result.as_of.isoformat(), "mode": mode,
                             "model_version": result.model_versions[-1] if result.model_versions else None,
                             "predictions": _records(result.frame)})

    @app.get("/rankings", dependencies=auth, tags=["forecasts"])
    def rankings(horizon: int = Query(5, description="Sessions ahead"), top: int = Query(20, ge=1, le=10000),
                 as_of: dt.date | None = Query(None, description="Origin session; default the newest")) -> JSONResponse:
        """The cross-sectional ranking (1 = highest expected return) of an origin at one horizon."""
        from ibf_core.forecasts import ForecastNotFound, ranking

        check_horizons([horizon])
        try:
            result = ranking(services.store, horizon, top, as_of, services.newest)
        except ForecastNotFound as exc:
            raise not_found(exc) from None
        return JSONResponse({"as_of": result.as_of.isoformat(), "horizon": horizon, "model_version": result.model_versions[-1],
                             "ranking": _records(result.frame)})

    @app.get("/forecasts/{symbol}", dependencies=auth, tags=["forecasts"])
    def forecasts(symbol: str, start: dt.date | None = None, end: dt.date | None = None) -> dict[str, Any]:
        """A symbol's stored forecasts with realized outcomes where matured (``forecast_outcomes``)."""
        from ibf_core.forecasts import forecast_history

        (name,) = check_symbols([symbol])
        if start and end and start > end:
            raise ApiError(422, f"start: {start} is after end {end}")
        frame = forecast_history(services.store, name, start, end)
        return {"symbol": name, "start": _jsonable(start), "end": _jsonable(end), "forecasts": _records(frame)}

    # ----- models, runs, monitoring ----------------------------------------------------------------------
    from ibf_serve import routes_ops

    routes_ops.add(app, services, instruments, auth)
    return app


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__


def _model_problem(exc: Exception) -> str:
    """What went wrong with a bundle, without the cache path in the message."""
    text = _first_line(exc)
    for marker in ("checksum mismatch", "manifest digest differs", "files differ from the manifest", "cannot download", "no manifest"):
        if marker in text:
            return marker + " (the bundle changed after training or is missing; see the server log)"
    return "its bundle could not be loaded (see the server log)"


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API under uvicorn (one process; the per-request metrics live in it)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
