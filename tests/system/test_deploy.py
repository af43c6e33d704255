"""The compose file: structure (healthchecks, named volumes, loopback ports, secrets only from env files) and
ibf's own services running exactly the commands of the process topology (``ibf_dagster/stack/topology.py``)."""

from __future__ import annotations

import re

import yaml

from helpers.paths import ROOT
from ibf_core.settings import get_settings
from ibf_dagster.stack.topology import SERVICES, command

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


def test_every_ibf_container_prepares_the_instance_first(ibf_home):
    from helpers.cli import run_ibf

    for name in SERVICES:
        entrypoint = COMPOSE["services"][name]["entrypoint"]
        assert entrypoint[:2] == ["sh", "-c"] and entrypoint[2].startswith("ibf stack prepare") and 'exec "$$@"' in entrypoint[2]
    done = run_ibf("stack", "prepare")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ibf_home / "dagster") and (ibf_home / "dagster" / "dagster.yaml").exists()


def test_the_grpc_workspace_names_the_code_service():
    workspace = yaml.safe_load((ROOT / "docker" / "workspace.grpc.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["grpc_server"] == {"host": "code", "port": 4000, "location_name": "ibf"}


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas():
    import kubernetes_validate

    documents = [d for path in sorted((ROOT / "docker" / "k8s").glob("*.yaml")) if path.name != "helm-values.yaml"
                 for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
    assert kinds == ["Deployment/ibf-api", "Deployment/ibf-mlflow", "PersistentVolumeClaim/ibf-mlflow-artifacts",
                     "PersistentVolumeClaim/ibf-state", "Service/ibf-api", "Service/ibf-mlflow"]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)  # raises naming the bad field
    api = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "ibf-api")
    assert api["spec"]["replicas"] == 3
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" and container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["command"][:2] == ["ibf", "serve"]


def test_helm_values_use_the_ibf_image_the_k8s_run_launcher_and_an_external_postgres():
    values = yaml.safe_load((ROOT / "docker" / "k8s" / "helm-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["image"]["repository"] == "ibf" and deployment["dagsterApiGrpcArgs"] == ["-m", "ibf_dagster.definitions"]
    assert {"name": "IBF_EXECUTOR", "value": "k8s"} in deployment["env"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["postgresql"]["enabled"] is False
    # The daemon runs the ibf image with ibf's run coordinator, configured with keys its config schema has.
    import importlib

    daemon = values["dagsterDaemon"]
    assert daemon["image"]["repository"] == "ibf" and daemon["runCoordinator"]["type"] == "CustomRunCoordinator"
    custom = daemon["runCoordinator"]["config"]["customRunCoordinator"]
    coordinator = getattr(importlib.import_module(custom["module"]), custom["class"])
    assert set(custom["config"]) <= set(coordinator.config_type())


def test_the_k8s_executor_runs_training_in_a_gpu_pod_on_the_configured_nodes(monkeypatch, ibf_home):
    import json

    from dagster_k8s import k8s_job_executor

    from ibf_dagster.definitions import build_definitions

    monkeypatch.setenv("IBF_EXECUTOR", "k8s")
    monkeypatch.setenv("IBF_K8S_GPU_NODE_SELECTOR", '{"accelerator": "nvidia-h100"}')
    monkeypatch.setenv("IBF_K8S_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    get_settings.cache_clear()
    defs = build_definitions(get_settings())
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def is k8s_job_executor
    node = next(n for n in job.graph.node_defs if n.name == "trained_models")
    config = json.loads(node.tags["dagster-k8s/config"])
    assert config["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert config["pod_spec_config"]["node_selector"] == {"accelerator": "nvidia-h100"}
    assert config["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    other = next(n for n in job.graph.node_defs if n.name == "features")
    assert "dagster-k8s/config" not in other.tags  # only training asks for a GPU
    monkeypatch.delenv("IBF_EXECUTOR")
    get_settings.cache_clear()
    plain = build_definitions(get_settings()).resolve_implicit_global_asset_job_def()
    assert plain.executor_def is not k8s_job_executor
    assert "dagster-k8s/config" not in next(n for n in plain.graph.node_defs if n.name == "trained_models").tags
    get_settings.cache_clear()


def test_a_second_stack_on_the_same_home_is_refused_before_it_starts_anything(ibf_home):
    import fcntl

    import pytest as _pytest

    from ibf_dagster.stack.run import StackError, stack

    folder = ibf_home / "stack"
    folder.mkdir(parents=True)
    with open(folder / "stack.lock", "a") as held:  # what a running `ibf stack up` holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with _pytest.raises(StackError, match="another ibf stack runs"), stack(get_settings()):
            pass
    assert sorted(p.name for p in folder.iterdir()) == ["stack.lock"]  # no Postgres, no service started
