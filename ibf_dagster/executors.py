"""How runs execute their steps (``IBF_EXECUTOR``), and what a GPU training step asks Kubernetes for."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ibf_core.settings import Settings

# Heavy imports (dagster, dagster_k8s) stay inside the functions that need them:
# importing this module loads none of them.

K8S_CONFIG_TAG = "dagster-k8s/config"


def gpu_k8s_config(settings: Settings | None = None) -> dict[str, Any]:
    """The pod of a training step (``k8s_job_executor``) or run (``K8sRunLauncher``): one NVIDIA GPU, on the
    nodes and with the tolerations the settings name."""
    config: dict[str, Any] = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}}}}
    pod: dict[str, Any] = {}
    if settings is not None and settings.k8s_gpu_node_selector:
        pod["node_selector"] = dict(settings.k8s_gpu_node_selector)
    if settings is not None and settings.k8s_gpu_tolerations:
        pod["tolerations"] = list(settings.k8s_gpu_tolerations)
    if pod:
        config["pod_spec_config"] = pod
    return config


def gpu_tags(settings: Settings | None = None) -> dict[str, str]:
    """Tags that ask for a GPU: ibf's run-queue tag and the Kubernetes resource request."""
    return {"ibf/accelerator": "gpu", K8S_CONFIG_TAG: json.dumps(gpu_k8s_config(settings))}


def executor_for(settings: Settings):
    """The Definitions' executor: Dagster's default with single-step runs in the run worker's process
    (``ibf_dagster.compat.single_step_in_process_executor``), or each step a Kubernetes Job."""
    if settings.executor != "k8s":
        return _default_executor()
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor


@lru_cache(maxsize=1)
def _default_executor():
    from ibf_dagster.compat import single_step_in_process_executor

    return single_step_in_process_executor()
