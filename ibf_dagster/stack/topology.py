"""The production process topology: one command per service, the single source the compose file and the
process-level topology share (``tests/system/test_deploy.py`` checks the compose file runs exactly these)."""

from __future__ import annotations

# {placeholders} are filled per deployment: ports, hosts and folders. Secrets never appear here: they come from
# the environment (env files in compose, Secrets in Kubernetes).
SERVICES: dict[str, list[str]] = {
    # The gRPC code location: the only process that imports ibf's definitions.
    "code": ["dagster", "code-server", "start", "-h", "{bind}", "-p", "{code_port}", "-m", "ibf_dagster.definitions"],
    "webserver": ["dagster-webserver", "-h", "{bind}", "-p", "{ui_port}", "-w", "{workspace}"],
    "daemon": ["dagster-daemon", "run", "-w", "{workspace}"],
    "mlflow": ["mlflow", "server", "--host", "{bind}", "--port", "{mlflow_port}",
               "--backend-store-uri", "{mlflow_backend}", "--artifacts-destination", "{mlflow_artifacts}"],
    "api": ["ibf", "serve", "--host", "{bind}", "--port", "{api_port}", "--workers", "{api_workers}"],
}

# The workspace the webserver and the daemon load: the code location over gRPC, never the module in-process.
GRPC_WORKSPACE = """load_from:
  - grpc_server:
      host: {code_host}
      port: {code_port}
      location_name: ibf
"""


def command(service: str, **values: str) -> list[str]:
    """The service's argv with its placeholders filled (a missing one is a KeyError naming it)."""
    return [part.format(**values) for part in SERVICES[service]]
