"""Live market data from IB (``ibf stream``): the collector, its tables and their micro-batch writer.

Entry point: :func:`collect` (what the CLI runs); :class:`ibf_core.streaming.collector.Collector` for a caller
managing its own event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.settings import Settings
    from ibf_core.storage.interface import TableStore
    from ibf_core.streaming.collector import StreamStats

# Heavy imports (duckdb, numpy, pandas, pyarrow) stay inside the functions that need them:
# importing this module loads none of them.


def collect(settings: Settings, store: TableStore, symbols: list[str] | None = None,
            duration_s: float | None = None) -> StreamStats:
    """Stream ``symbols`` (the universe when None) into the warehouse until ``duration_s`` or Ctrl-C."""
    from ibf_core.streaming.collector import Collector
    from ibf_core.streaming.priority import newest_ranking

    collector = Collector(
        store, symbols or list(settings.universe), host=settings.ib_host, ports=list(settings.ib_ports),
        client_id=settings.ib_client_id, max_lines=settings.ib_max_lines, flush_s=settings.stream_flush_seconds,
        connect_timeout=settings.ib_timeout, realtime_per_10min=settings.ib_realtime_bars_per_10min,
        bar_types=tuple(settings.stream_bar_types), tick_symbols=settings.stream_tick_symbols,
        depth_rows=settings.stream_depth_rows, watchlist=settings.stream_watchlist, ranking=newest_ranking(store),
        retention_days=settings.stream_retention_days, max_pending_rows=settings.stream_max_pending_rows,
    )
    return asyncio.run(collector.run(duration_s))
