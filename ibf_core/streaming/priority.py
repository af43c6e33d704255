"""Which symbols get IB's market-data lines: the watch list first, then the extremes of the newest cross-sectional
ranking (alternately the top and the bottom: where a long/short book acts), then the rest in the order given."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ibf_core.storage.interface import TableStore

RANKING_HORIZON = 1  # sessions ahead: the ranking an intraday watcher acts on


def serve_order(symbols: Sequence[str], watchlist: Sequence[str], ranking: pd.Series | None,
                max_lines: int) -> tuple[list[str], list[str]]:
    """(served, unserved): watch list, then ranks 1, N, 2, N-1, ... of ``ranking`` (symbol -> rank, 1 = highest
    expected return), then the rest of ``symbols`` in order; the first ``max_lines`` are served."""
    order = list(dict.fromkeys([*watchlist, *symbols]))
    candidates = set(order)
    if ranking is not None and len(ranking):
        ranked = [s for s in ranking.sort_values(kind="stable").index if s in candidates]
        extremes = [s for pair in zip(ranked, reversed(ranked)) for s in pair][: len(ranked)]
        head = list(dict.fromkeys(watchlist))
        order = list(dict.fromkeys([*head, *extremes, *order]))
    return order[:max_lines], order[max_lines:]


def newest_ranking(store: TableStore, horizon: int = RANKING_HORIZON) -> pd.Series | None:
    """symbol -> rank of the newest stored predictions at ``horizon`` (None: no predictions stored yet)."""
    if not store.exists():
        return None
    rows = store.query(
        'SELECT symbol, "rank" FROM predictions WHERE horizon = ? AND date = (SELECT max(date) FROM predictions)', [horizon]
    )
    if rows.empty:
        return None
    return rows.set_index("symbol")["rank"].astype("int64")
