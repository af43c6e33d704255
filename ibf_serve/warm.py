"""Refresh-ahead for fresh predictions: after a write to ``market_bars`` or ``features`` settles, read what the next
``POST /predict {"fresh": true}`` reads (and build its panel), so the first caller after a daily cycle is answered
from memory; after a ``predictions`` write, read the newest stored forecasts every request consults.

A fresh prediction reads the universe's bars and features over the model's look-back (one Parquet file per
symbol and table: ~3 s for 500 symbols, mostly opening files) and keeps them in the service's ``ReadCache`` until
a writer swaps a file in. Without this, the first caller after each daily cycle pays that read. The warmer looks
at the two tables' stamps every ``IBF_API_FRESH_WARM_SECONDS``; when they changed and then stayed the same for
one look (a cycle writes bars, then features), it forecasts the universe at its newest origin, which fills the
cache. A fresh request that arrives during a warm-up waits for it rather than reading the same files beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from ibf_core.features.table import features_spec
from ibf_core.forecasts import fresh_forecasts
from ibf_core.models import HORIZONS
from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS

log = logging.getLogger(__name__)

# A request waits at most this long for a warm-up in progress, then reads for itself.
WAIT_FOR_WARMUP_S = 60.0
WARM_NICE = 10


class FreshWarmer:
    def __init__(self, services: Any, interval_s: float):
        self.services, self.interval_s = services, interval_s
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self.warmups = 0  # completed warm-ups (tests and the log read it)
        self.last_error: str | None = None

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ibf-fresh-warmer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_FOR_WARMUP_S)
            self._thread = None

    def wait_idle(self) -> None:
        """Block while a warm-up runs (bounded): the caller then reads from the cache it filled."""
        self._idle.wait(WAIT_FOR_WARMUP_S)

    def _stamps(self) -> tuple:
        store = self.services.store
        return tuple(store.table_stamp(spec) for spec in (MARKET_BARS, features_spec(), PREDICTIONS))

    def _run(self) -> None:
        # Below the run that is writing (a daily cycle on the same cores): the warm-up takes the idle CPU. Linux
        # sets a thread's nice value by its id; the DuckDB threads its reads start inherit it.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_NICE)
        previous = warmed = None
        while not self._stop.wait(self.interval_s):
            try:
                stamps = self._stamps()
            except Exception as exc:  # noqa: BLE001 - a warehouse not created yet, a folder being swapped
                log.debug("fresh warm-up: cannot read the table stamps (%s)", exc)
                continue
            settled, previous = stamps == previous, stamps
            if not settled or stamps == warmed:
                continue
            if warmed is None or stamps[:2] != warmed[:2]:
                self.warm()
            self.refresh_stored()  # the newest stored forecasts every request's index is read from
            warmed = stamps  # also after a failure: the next write tries again, not every poll

    def refresh_stored(self) -> None:
        """Read the newest stored forecasts again (each request checks them first) when a write changed them."""
        try:
            self.services.served.index()
        except Exception as exc:  # noqa: BLE001 - the request path reports problems
            log.info("stored forecasts not refreshed: %s: %s", type(exc).__name__, exc)

    def warm(self) -> bool:
        """Forecast the universe at its newest origin through the service's cache; False (and logged) when it cannot."""
        services = self.services
        universe = list(services.settings.universe)
        self._idle.clear()
        try:
            versions = services.versions()
            if not versions or not universe:
                return False
            fresh_forecasts(services.fresh_reads, versions, services.load_bundle, universe, universe, HORIZONS)
            self.warmups += 1
            self.last_error = None
            return True
        except Exception as exc:  # noqa: BLE001 - a warm-up only saves time; the request path reports problems
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.info("fresh warm-up skipped: %s", self.last_error)
            return False
        finally:
            self._idle.set()
