"""The REST service: ``create_app(settings)`` builds the FastAPI app; ``serve`` runs it under uvicorn."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import time
from typing import Any

from fastapi import Depends, FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ibf_core.settings import Settings
from ibf_serve import errors
from ibf_serve.auth import KeyRing, RateLimiter, load_digests
from ibf_serve.errors import ApiError
from ibf_serve.metrics import Instruments, PlatformCollector
from ibf_serve.routes import models, monitoring, ops, runs
from ibf_serve.routes.deps import AUTH, ApiState, authorized
from ibf_serve.schemas import ERROR_RESPONSES, PredictRequest
from ibf_serve.services import Services
from ibf_serve.stored import jsonable as _jsonable
from ibf_serve.stored import records as _records


def create_app(settings: Settings) -> FastAPI:
    """The ibf REST API for ``settings`` (the one entry point: ``ibf serve`` and the tests call it)."""
    from ibf_core.models import HORIZONS

    services = Services(settings)
    keys = KeyRing(load_digests(settings.api_keys, settings.api_keys_file))
    shared = settings.serve_run_dir  # the folder the workers of one `ibf serve --workers N` share
    limiter = RateLimiter(settings.api_rate_limit, keys.digests, shared / "rate-limit.bin" if shared else None)
    instruments = Instruments(shared / "metrics" if shared else None)
    from ibf_serve.figures import platform_metrics

    instruments.exposed.register(PlatformCollector(lambda: platform_metrics(services), settings.api_metrics_cache_seconds))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        services.warmer.start()  # refresh-ahead of fresh predictions (ibf_serve/warm.py)
        try:
            yield
        finally:
            await run_in_threadpool(services.warmer.stop)

    app = FastAPI(title="ibf", version="0.1.0", description="Forecasts, models, retraining and metrics of the ibf platform.",
                  responses=ERROR_RESPONSES, lifespan=lifespan)
    app.state.services = services
    app.state.api = ApiState(services, instruments, keys, limiter, frozenset(settings.universe))
    scrub = errors.install(app, settings.secret_values())
    if settings.api_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.api_cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    from ibf_serve.middleware import Measure

    # A plain ASGI middleware (not BaseHTTPMiddleware): it costs microseconds, not a task per request.
    app.add_middleware(Measure, instruments=instruments, scrub=scrub)

    # The stored-forecast routes are coroutines: a plain ``def`` would cost a thread hop per request. Anything
    # that may read files runs in the thread pool.
    auth = AUTH
    universe = set(settings.universe)

    def check_symbols(raw: list[str], stored: frozenset[str] = frozenset()) -> list[str]:
        from ibf_core.settings import normalize_symbol

        if len(raw) > settings.api_max_symbols:
            raise ApiError(422, f"symbols: {len(raw)} symbols asked, at most {settings.api_max_symbols} allowed (IBF_API_MAX_SYMBOLS)")
        out = []
        for s in raw:
            try:
                out.append(normalize_symbol(s))
            except ValueError:
                raise ApiError(422, f"symbols: {s[:20]!r} is not a valid symbol") from None
        unknown = sorted(set(out) - universe - stored)
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
    async def newest_index():
        """The newest origin's rendered forecasts (read again in the thread pool only after a write)."""
        ready, index = services.served.without_waiting()
        return index if ready else await run_in_threadpool(services.served.index)

    def json_bytes(body: bytes) -> Response:
        return Response(body, media_type="application/json")

    @app.post("/predict", dependencies=auth, tags=["forecasts"])
    async def predict(body: PredictRequest) -> Response:
        """Forecasts of symbols x horizons: stored (the newest origin, or ``as_of``) or computed now (``fresh``)."""
        from ibf_core.forecasts import ForecastNotFound, fresh_forecasts, stored_forecasts
        from ibf_core.models import ModelDataError, ModelLoadError

        index = await newest_index()
        symbols = check_symbols(body.symbols, index.symbols if index is not None else frozenset())
        horizons = check_horizons(body.horizons)
        mode = "fresh" if body.fresh else "stored"
        start = time.perf_counter()
        if not body.fresh and not body.live_price and index is not None and body.as_of in (None, index.as_of):
            found = index.select(symbols, horizons)  # the common request: answered from memory
            if not found.parts:
                raise not_found(ForecastNotFound(f"no stored predictions on origin {index.as_of} for the requested symbols"))
            instruments.prediction_latency.labels(mode).observe(time.perf_counter() - start)
            instruments.predictions.labels(mode).inc(len(found.parts))
            return json_bytes(found.body({"mode": mode}, "predictions"))
        try:
            if body.fresh:
                await run_in_threadpool(services.warmer.wait_idle)  # a warm-up in progress fills the cache we read
                versions = await run_in_threadpool(services.versions)
                if not versions:
                    raise ApiError(503, "no model is registered: train one first (ibf train)")
                result = await run_in_threadpool(fresh_forecasts, services.fresh_reads, versions, services.load_bundle,
                                                 list(settings.universe), symbols, horizons, body.as_of)
            else:
                result = await run_in_threadpool(stored_forecasts, services.store, symbols, horizons, body.as_of)
        except ForecastNotFound as exc:
            raise not_found(exc) from None
        except ModelLoadError as exc:
            raise ApiError(503, "the model cannot be used for fresh predictions: " + _model_problem(exc)) from None
        except ModelDataError as exc:
            raise ApiError(422, _first_line(exc)) from None
        frame = result.frame
        if body.live_price:
            frame = await run_in_threadpool(_on_live_prices, frame)
        instruments.prediction_latency.labels(mode).observe(time.perf_counter() - start)
        instruments.predictions.labels(mode).inc(len(frame))
        # A JSONResponse straight away: FastAPI's jsonable_encoder would walk every value a second time.
        return JSONResponse({"as_of": result.as_of.isoformat(), "mode": mode,
                             "model_version": result.model_versions[-1] if result.model_versions else None,
                             "predictions": _records(frame)})

    def _on_live_prices(frame):
        from ibf_core.streaming.live_prices import against_live_prices, newest_live_prices

        prices = newest_live_prices(services.store, frame["symbol"].unique().tolist())
        return against_live_prices(frame, prices, max_age_s=settings.live_price_max_age_seconds)

    @app.get("/rankings", dependencies=auth, tags=["forecasts"])
    async def rankings(horizon: int = Query(5, description="Sessions ahead"), top: int = Query(20, ge=1, le=10000),
                       as_of: dt.date | None = Query(None, description="Origin session; default the newest")) -> Response:
        """The cross-sectional ranking (1 = highest expected return) of an origin at one horizon."""
        from ibf_core.forecasts import ForecastNotFound, ranking

        check_horizons([horizon])
        index = await newest_index()
        if index is not None and as_of in (None, index.as_of):
            found = index.top(horizon, top)
            if not found.parts:
                raise not_found(ForecastNotFound(f"no stored predictions on origin {index.as_of} at horizon {horizon}"))
            return json_bytes(found.body({"horizon": horizon}, "ranking"))
        try:
            result = await run_in_threadpool(ranking, services.store, horizon, top, as_of)
        except ForecastNotFound as exc:
            raise not_found(exc) from None
        return JSONResponse({"as_of": result.as_of.isoformat(), "horizon": horizon, "model_version": result.model_versions[-1],
                             "ranking": _records(result.frame)})

    @app.get("/forecasts/{symbol}", dependencies=auth, tags=["forecasts"])
    def forecasts(symbol: str, start: dt.date | None = None, end: dt.date | None = None) -> dict[str, Any]:
        """A symbol's stored forecasts with realized outcomes where matured (``forecast_outcomes``)."""
        from ibf_core.forecasts import forecast_history

        index = services.served.index()
        (name,) = check_symbols([symbol], index.symbols if index is not None else frozenset())
        if start and end and start > end:
            raise ApiError(422, f"start: {start} is after end {end}")
        frame = forecast_history(services.store, name, start, end)
        return {"symbol": name, "start": _jsonable(start), "end": _jsonable(end), "forecasts": _records(frame)}

    # ----- models, runs, monitoring ----------------------------------------------------------------------
    for router in (models.router, runs.router, monitoring.router):
        app.include_router(router)
    # The key only, unless public: the metrics serve without a warehouse.
    app.include_router(ops.metrics_router, dependencies=[] if settings.api_metrics_public else [Depends(authorized)])
    # The ~1M objects of the imports (pandas, DuckDB, MLflow, Dagster) move out of the collector's reach: a full
    # collection over them stalls every request for hundreds of milliseconds (the p99 under load).
    gc.freeze()
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


def app_for_worker() -> FastAPI:
    """The app of one worker process of ``ibf serve --workers N`` (uvicorn's factory; settings from the
    environment the server process prepared)."""
    from ibf_core.settings import get_settings

    return create_app(get_settings())


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> None:
    """Run the API under uvicorn: one process, or ``workers`` processes sharing the port, the metrics and the
    rate limit through a run folder (``<state>/serve/<port>/``, emptied at start; one server per port)."""
    import fcntl
    import shutil

    import uvicorn

    workers = workers or settings.api_workers
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
        return
    run_dir = settings.serve_run_dir or settings.home_dir / "serve" / str(port)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another ibf serve uses {run_dir} (port {port})") from None
        shutil.rmtree(run_dir, ignore_errors=True)  # the counters of a previous server on this port
        (run_dir / "metrics").mkdir(parents=True)
        from ibf_core.settings import export_to_children

        # Read by the workers (spawned: fresh interpreters): prometheus_client at import, Settings at start.
        export_to_children({"PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "IBF_SERVE_RUN_DIR": str(run_dir)})
        uvicorn.run("ibf_serve.app:app_for_worker", factory=True, workers=workers, host=host, port=port,
                    log_level="info", access_log=False)
