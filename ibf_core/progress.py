"""Process-wide sinks: long loops report progress, and notices the user must see, here; a front end (the CLI) may listen."""

from __future__ import annotations

import logging
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


NoticeSink = Callable[[str], None]
_notice_sink: NoticeSink | None = None


def set_notice_sink(sink: NoticeSink | None) -> None:
    """Install (or remove) the callable that receives one-line notices (a freed run, a wait for a pool slot)."""
    global _notice_sink
    _notice_sink = sink


def report_notice(message: str) -> None:
    """Tell the user something they must know now; without a front end it goes to the ``ibf`` logger."""
    if _notice_sink is not None:
        _notice_sink(message)
    else:
        logging.getLogger("ibf").warning(message)
