"""The REST service: ``create_app(settings)`` builds the FastAPI app; ``serve`` runs it under uvicorn.

The routes live in ``ibf_serve/routes/`` (one ``APIRouter`` per module); the app brings the middleware, the error
handlers, the metrics, the warm-up's lifespan and the parts the routes share (``app.state.api``)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import shutil

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from ibf_core.settings import Settings, export_to_children, get_settings
from ibf_serve import errors
from ibf_serve.auth import KeyRing, RateLimiter, load_digests
from ibf_serve.figures import platform_metrics
from ibf_serve.metrics import Instruments, PlatformCollector
from ibf_serve.middleware import Measure
from ibf_serve.routes import forecasts, models, monitoring, ops, portfolios, runs
from ibf_serve.routes.deps import ApiState, authorized
from ibf_serve.schemas import error_responses
from ibf_serve.services import Services


def create_app(settings: Settings) -> FastAPI:
    """The ibf REST API for ``settings`` (the one entry point: ``ibf serve`` and the tests call it)."""
    services = Services(settings)
    keys = KeyRing(load_digests(settings.api_keys, settings.api_keys_file))
    shared = settings.serve_run_dir  # the folder the workers of one `ibf serve --workers N` share
    limiter = RateLimiter(settings.api_rate_limit, keys.digests, shared / "rate-limit.bin" if shared else None)
    instruments = Instruments(shared / "metrics" if shared else None)
    instruments.exposed.register(PlatformCollector(lambda: platform_metrics(services), settings.api_metrics_cache_seconds))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        services.warmer.start()  # refresh-ahead of fresh predictions (ibf_serve/warm.py)
        try:
            yield
        finally:
            await run_in_threadpool(services.warmer.stop)

    app = FastAPI(title="ibf", version="0.1.0", description="Forecasts, models, retraining and metrics of the ibf platform.",
                  lifespan=lifespan)
    app.state.services = services
    app.state.api = ApiState(services, instruments, keys, limiter, frozenset(settings.universe))
    scrub = errors.install(app, settings.secret_values())
    if settings.api_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.api_cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    # A plain ASGI middleware (not BaseHTTPMiddleware): it costs microseconds, not a task per request.
    app.add_middleware(Measure, instruments=instruments, scrub=scrub)

    # The order of the paths in the OpenAPI document: liveness and readiness, forecasts, models, runs,
    # monitoring, portfolios, metrics.
    for router in (ops.router, forecasts.router, models.router, runs.router, monitoring.router, portfolios.router):
        app.include_router(router)
    # The key only, unless public: the metrics serve without a warehouse.
    public = settings.api_metrics_public
    app.include_router(ops.metrics_router, dependencies=[] if public else [Depends(authorized)],
                       responses=error_responses() if public else error_responses(401, 403, 429))
    _declare_limits(app, settings)
    # The ~1M objects of the imports (pandas, DuckDB, MLflow, Dagster) move out of the collector's reach: a full
    # collection over them stalls every request for hundreds of milliseconds (the p99 under load).
    gc.freeze()
    return app


def _declare_limits(app: FastAPI, settings: Settings) -> None:
    """Put the configured limits into the OpenAPI document (the server enforces them): the most symbols a
    ``/predict`` may ask for (``IBF_API_MAX_SYMBOLS``)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = build()
            symbols = document["components"]["schemas"]["PredictRequest"]["properties"]["symbols"]
            symbols["maxItems"] = settings.api_max_symbols
        return app.openapi_schema

    app.openapi = openapi


def app_for_worker() -> FastAPI:
    """The app of one worker process of ``ibf serve --workers N`` (uvicorn's factory; settings from the
    environment the server process prepared)."""
    return create_app(get_settings())


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> None:
    """Run the API under uvicorn: one process, or ``workers`` processes sharing the port, the metrics and the
    rate limit through a run folder (``<state>/serve/<port>/``, emptied at start; one server per port)."""
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
        # Read by the workers (spawned: fresh interpreters): prometheus_client at import, Settings at start.
        export_to_children({"PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "IBF_SERVE_RUN_DIR": str(run_dir)})
        uvicorn.run("ibf_serve.app:app_for_worker", factory=True, workers=workers, host=host, port=port,
                    log_level="info", access_log=False)
