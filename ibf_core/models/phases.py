"""Seconds and peak resident memory of each phase of one training (what ``bundle.facts["phases"]`` records).

RSS is sampled every ``interval`` seconds in a daemon thread and attributed to the phase in force; a phase's
peak is the highest sample while it ran (so a short spike between samples can be missed: 50 ms is far below
any phase of a training).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ibf_core.processes import rss_mib


class PhaseMeter:
    """``with meter.phase("fit lstm"): ...`` records that phase's seconds and peak RSS (MiB)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.phases: dict[str, dict[str, float]] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_rss = rss_mib()

    def __enter__(self) -> "PhaseMeter":
        self._thread = threading.Thread(target=self._sample, name="ibf-phase-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _note(self, name: str | None) -> None:
        value = rss_mib()
        if name is not None and value is not None:
            record = self.phases[name]
            record["peak_rss_mib"] = max(record.get("peak_rss_mib", 0.0), value)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(self._current)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time ``name`` and attribute RSS samples to it (a phase entered again accumulates its seconds)."""
        outer = self._current
        record = self.phases.setdefault(name, {"seconds": 0.0})
        self._current = name
        self._note(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            record["seconds"] += time.perf_counter() - started
            self._note(name)
            self._current = outer

    def facts(self) -> dict[str, Any]:
        """``{"phases": {name: {seconds, peak_rss_mib}}, "peak_rss_mib", "start_rss_mib"}`` rounded for the record."""
        phases = {n: {k: round(v, 1) for k, v in r.items()} for n, r in self.phases.items()}
        peaks = [r["peak_rss_mib"] for r in phases.values() if "peak_rss_mib" in r]
        return {
            "phases": phases,
            "peak_rss_mib": max(peaks) if peaks else None,
            "start_rss_mib": round(self.start_rss, 1) if self.start_rss is not None else None,
        }
