"""What the routes share: settings, the read-only warehouse, registry versions, verified bundles, the instance."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ibf_core.forecasts import NewestForecasts, performance
from ibf_core.models.bundle import verify_bundle
from ibf_core.models.registry import list_versions, load_registered
from ibf_core.settings import Settings
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.read_cache import ReadCache
from ibf_dagster.instance import get_instance
from ibf_serve.stored import ServedNewest
from ibf_serve.warm import FreshWarmer

_VERSIONS_TTL_S = 5.0  # a newly registered version is served within this many seconds


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = open_warehouse(settings, reader=True)  # only read (read / query open read-only)
        # fresh predictions read the same bars and features again and again until a backfill swaps one in
        self.fresh_reads = ReadCache(self.store)
        self.warmer = FreshWarmer(self, settings.api_fresh_warm_seconds)  # started and stopped with the app
        self._lock = threading.Lock()
        self._versions: tuple[float, list] | None = None
        self._bundles: dict[tuple[str, str], Any] = {}
        self._instance = None
        self._performance: tuple[float, Any] | None = None
        self.newest = NewestForecasts(self.store)  # the newest origin in memory, re-read after each write
        self.served = ServedNewest(self.newest)  # ... and rendered as JSON records once per origin

    def versions(self) -> list:
        """Registered versions (oldest cut-off first), re-read every few seconds."""
        with self._lock:
            now = time.monotonic()
            if self._versions is None or now - self._versions[0] > _VERSIONS_TTL_S:
                # No MLflow store yet means no version; opening it would create it (the service only reads).
                exists = not self.settings.mlflow_is_local or (self.settings.home_dir / "mlflow.db").exists()
                found = list_versions(self.settings.mlflow_uri, self.settings.model_name) if exists else []
                self._versions = (now, found)
            return self._versions[1]

    def load_bundle(self, model):
        """A registered bundle, verified against its manifest digest on every call (a tampered file is refused
        even after the bundle was loaded once); the loaded members are kept in memory."""
        key = (model.version, model.manifest_sha256)
        cached = self._bundles.get(key)
        if cached is not None:
            verify_bundle(Path(self.settings.model_cache_dir) / model.name / model.version, model.manifest_sha256)
            return cached
        bundle = load_registered(self.settings.mlflow_uri, model, self.settings.model_cache_dir)
        self._bundles[key] = bundle
        return bundle

    def instance(self):
        """The persistent Dagster instance (the one the UI and the daemon use), opened once."""
        with self._lock:
            if self._instance is None:
                self._instance = get_instance(self.settings)
            return self._instance

    def performance(self):
        """Pooled rolling performance per horizon, reused for the metrics cache period."""
        now = time.monotonic()
        if self._performance is None or now - self._performance[0] > self.settings.api_metrics_cache_seconds:
            self._performance = (now, performance(self.store, self.settings.drift_performance_sessions))
        return self._performance[1]
