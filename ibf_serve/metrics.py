"""Prometheus metrics: HTTP and prediction instruments updated per request, and platform figures (assets,
checks, drift, retrains, model, rolling accuracy, ingestion, GPU) collected at scrape time, cached briefly.

Label sets are bounded: route templates (never raw paths), statuses, modes, asset / check / detector names and
horizons; never a symbol.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("ibf_serve")

ASSETS = ("market_bars", "news_sentiment", "features", "trained_models", "predictions", "drift_scores", "portfolio_weights",
          "portfolio_returns")
# Latency buckets for a service whose stored reads take milliseconds and fresh predictions up to seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Instruments:
    """The per-request instruments of one app, in its own registry (several apps never share counters).

    With ``shared_dir`` (the workers of one ``ibf serve --workers N``) prometheus_client keeps the values in
    files there (it must have been imported with ``PROMETHEUS_MULTIPROC_DIR`` set to that folder); a scrape
    answered by any worker sums every worker's counters and histograms, and the process figures of all of them.
    """

    def __init__(self, shared_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.exposed = self.registry
        if shared_dir is None:
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        else:
            if values.ValueClass.__name__ != "MmapedValue":
                raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed, path=str(shared_dir))
            self.exposed.register(WorkersProcessCollector(shared_dir))
        self.requests = Counter("ibf_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("ibf_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["route", "method"], buckets=_BUCKETS, registry=self.registry)
        self.prediction_latency = Histogram("ibf_prediction_duration_seconds", "Time to answer a prediction request by mode",
                                            ["mode"], buckets=_BUCKETS, registry=self.registry)
        self.predictions = Counter("ibf_predictions", "Forecasts served by mode (stored or fresh)", ["mode"], registry=self.registry)
        for mode in ("stored", "fresh"):  # both series exist from the start, so rate() sees the first request
            self.predictions.labels(mode)
        self.retrains_requested = Counter("ibf_api_retrains_requested", "Retrain runs submitted through the API", registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.exposed)


class WorkersProcessCollector:
    """CPU seconds and resident memory summed over the live worker processes sharing ``folder`` (found by the
    pids in prometheus_client's file names) and their parent, the server process; read from ``/proc``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _pids(self) -> set[int]:
        found = {os.getpid(), os.getppid()}
        for path in self.folder.glob("*.db"):
            tail = path.stem.rsplit("_", 1)[-1]
            if tail.isdigit():
                found.add(int(tail))
        return {p for p in found if Path(f"/proc/{p}/stat").exists()}

    def collect(self) -> Iterator[Metric]:
        cpu = memory = 0.0
        counted = 0
        for pid in self._pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited between the listing and the read
            cpu += (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
            memory += pages * self._page
            counted += 1
        cpu_total = counter("process_cpu_seconds", "CPU seconds of the server and its workers")
        cpu_total.add_metric([], cpu)
        rss = gauge("process_resident_memory_bytes", "Resident memory of the server and its workers")
        rss.add_metric([], memory)
        workers = gauge("ibf_serve_processes", "Processes of this ibf serve (server and workers) counted above")
        workers.add_metric([], float(counted))
        yield from (cpu_total, rss, workers)

    def describe(self) -> list:
        return []


class PlatformCollector:
    """Figures read from the warehouse, the registry and the Dagster instance when Prometheus scrapes.

    ``figures()`` computes them; the result is reused for ``cache_s`` seconds so a scrape stays cheap. A part
    that fails is left out of that scrape (and logged), never reported as zero.
    """

    def __init__(self, figures: Callable[[], list[Metric]], cache_s: float):
        self._figures, self._cache_s = figures, cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._cache_s:
                self._cached = (now, self._figures())
            metrics = self._cached[1]
        yield from metrics

    def describe(self) -> list:
        return []  # collected lazily: registering must not read the warehouse


def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def gpu_metrics() -> list[Metric]:
    """GPU utilization and memory from nvidia-smi; no metric at all where there is no NVIDIA GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    util = gauge("ibf_gpu_utilization_ratio", "GPU utilization (0..1)", ["gpu"])
    used = gauge("ibf_gpu_memory_used_bytes", "GPU memory in use", ["gpu"])
    total = gauge("ibf_gpu_memory_total_bytes", "GPU memory", ["gpu"])
    for line in out.strip().splitlines():
        try:
            index, u, m, t = (p.strip() for p in line.split(","))
            util.add_metric([index], float(u) / 100)
            used.add_metric([index], float(m) * 2**20)
            total.add_metric([index], float(t) * 2**20)
        except ValueError:
            continue
    return [util, used, total]
