"""The API's routes, one ``APIRouter`` per module; ``ibf_serve.app.create_app`` includes them in this order:
``ops`` (health, readiness), ``forecasts``, ``models``, ``runs``, ``monitoring``, then ``ops.metrics_router``.
Handlers reach the app's shared parts through ``ibf_serve.routes.deps`` (``app.state.api``), never a closure."""
