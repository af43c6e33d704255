"""A process-wide progress sink: long loops report here, a front end (the CLI's progress bar) may listen."""

from __future__ import annotations

from collections.abc import Callable

ProgressSink = Callable[[int, int, str], None]
_sink: ProgressSink | None = None


def set_progress_sink(sink: ProgressSink | None) -> None:
    """Install (or remove, with None) the callable that receives ``(done, total, label)``."""
    global _sink
    _sink = sink


def report_progress(done: int, total: int, label: str = "") -> None:
    if _sink is not None:
        _sink(done, total, label)
