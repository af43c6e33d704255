"""The compose file: structure (healthchecks, named volumes, loopback ports, secrets only from env files) and
ibf's own services running exactly the commands of the process topology (``ibf_dagster/stack/topology.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ibf_dagster.stack.topology import SERVICES, command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
# What the compose network fills into the topology's placeholders.
IN_COMPOSE = {"bind": "0.0.0.0", "code_port": "4000", "ui_port": "3000", "workspace": "/app/docker/workspace.grpc.yaml",
              "mlflow_port": "5000", "mlflow_backend": "${MLFLOW_BACKEND_STORE_URI}", "mlflow_artifacts": "/state/mlflow-artifacts",
              "api_port": "8000", "api_workers": "2"}


def test_compose_runs_the_topology_commands():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "code", "webserver", "daemon", "mlflow", "api", "prometheus", "grafana"}
    for name in SERVICES:
        assert services[name]["command"] == command(name, **IN_COMPOSE), name


def test_compose_structure_healthchecks_volumes_ports_and_secrets():
    services, volumes = COMPOSE["services"], set(COMPOSE["volumes"])
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source.startswith(".") or source in volumes, (name, mount)  # a named volume or a repo file
            if source.startswith("."):
                assert (ROOT / "docker" / source).resolve().exists(), (name, source)
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"PASSWORD|SECRET|KEY|TOKEN|_URL$", key) or key == "IBF_DAGSTER_URL", (name, key)
    text = (ROOT / "docker" / "compose.yaml").read_text()
    assert "change-me" not in text and "ibf.env" in text
    example = (ROOT / "docker" / "ibf.env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "IBF_DAGSTER_PG_URL", "MLFLOW_BACKEND_STORE_URI", "IBF_API_KEYS"):
        assert f"{variable}=" in example
    assert "docker/ibf.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_grpc_workspace_names_the_code_service():
    workspace = yaml.safe_load((ROOT / "docker" / "workspace.grpc.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["grpc_server"] == {"host": "code", "port": 4000, "location_name": "ibf"}
