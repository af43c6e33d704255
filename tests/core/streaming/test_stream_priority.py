"""Which symbols ibf stream serves with its market-data lines: the watch list, then the top and bottom of the
newest stored ranking, then the rest (pure function, the warehouse reader, and a collector run over the simulator)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ibf_core.sim.ib.live import LiveClock, session_start
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.sources.sample import load_sample_bars
from ibf_core.storage.tables import PREDICTIONS
from ibf_core.storage.warehouse import Warehouse
from ibf_core.streaming.priority import newest_ranking, serve_order
from helpers.live import DAY, SPEED

pytest.importorskip("ib_insync")
UNIVERSE = [f"S{k}" for k in range(8)]


def test_serve_order_puts_the_watch_list_then_the_ranking_extremes_then_the_rest():
    ranking = pd.Series({"S3": 1, "S5": 2, "S0": 3, "S1": 4, "S6": 5, "S7": 6}).sample(frac=1, random_state=0)
    served, unserved = serve_order(UNIVERSE, ["S2", "S6"], ranking, 5)
    assert served == ["S2", "S6", "S3", "S7", "S5"]  # watch list; rank 1, rank 6, rank 2 (S6 already in)
    assert unserved == ["S0", "S1", "S4"]  # ranks 3 and 4 (the middle), then the unranked in given order
    assert serve_order(UNIVERSE, [], None, 3) == (UNIVERSE[:3], UNIVERSE[3:])
    assert serve_order(UNIVERSE, [], ranking, 100) == (["S3", "S7", "S5", "S6", "S0", "S1", "S2", "S4"], [])
    # A ranked symbol outside the universe is not served; a watched one is, first.
    assert serve_order(["A", "B"], ["W"], pd.Series({"X": 1, "B": 2}), 2) == (["W", "B"], ["A"])


def _store_predictions(store: Warehouse, ranks: dict[str, int], date: dt.date, other: dict[int, dict[str, int]] | None = None) -> None:
    """Horizon 1 ranks (and ``other`` horizons') of one origin, the other columns filled with placeholders."""
    values = {"string": "v1", "date32[day]": pd.Timestamp(date), "int64": 0, "double": 0.0}
    rows = []
    for horizon, by_symbol in {1: ranks, **(other or {})}.items():
        for symbol, rank in by_symbol.items():
            row = {c.name: values[str(c.type)] for c in PREDICTIONS.columns if not c.optional}
            rows.append({**row, "symbol": symbol, "date": pd.Timestamp(date), "horizon": horizon, "rank": rank})
    assert all(str(c.type) in values for c in PREDICTIONS.columns), [c.type for c in PREDICTIONS.columns]
    frame = pd.DataFrame(rows)
    store.replace_slice(PREDICTIONS, frame, sorted(ranks), date, date)


def test_newest_ranking_reads_the_newest_origin_at_horizon_one(tmp_path):
    store = Warehouse(tmp_path / "home")
    assert newest_ranking(store) is None  # no warehouse yet
    store.ensure_all_tables()
    assert newest_ranking(store) is None  # no predictions yet
    _store_predictions(store, {"S0": 1, "S1": 2}, dt.date(2024, 1, 2))
    _store_predictions(store, {"S0": 2, "S1": 1}, dt.date(2024, 1, 3), {5: {"S0": 1, "S1": 2}})
    assert newest_ranking(store).sort_index().to_dict() == {"S0": 2, "S1": 1}


def test_a_collector_with_fewer_lines_than_symbols_serves_by_priority(tmp_path):
    from ibf_core.streaming import collect
    from ibf_core.settings import load_settings

    clock = LiveClock(session_start(DAY) + dt.timedelta(minutes=30), speed=SPEED)
    with GatewaySimulator(load_sample_bars(), live_clock=clock) as sim:
        store = Warehouse(tmp_path / "home")
        store.ensure_all_tables()
        _store_predictions(store, {"AAPL": 1, "GOOG": 2, "MSFT": 3, "IBM": 4}, dt.date(2013, 2, 27))
        settings = load_settings(ib_ports=[sim.port], ib_max_lines=3, stream_watchlist=["GOOG"],
                                 stream_flush_seconds=0.2, stream_retention_days=0)
        stats = collect(settings, store, ["MSFT", "IBM", "AAPL", "GOOG"], duration_s=1.0)
    assert stats.unserved == ["MSFT"]  # GOOG (watched), AAPL (top), IBM (bottom) got the 3 lines
    served = store.query("SELECT DISTINCT symbol FROM quotes ORDER BY 1").symbol.tolist()
    assert served == ["AAPL", "GOOG", "IBM"]
    assert store.query("SELECT DISTINCT symbol FROM intraday_bars ORDER BY 1").symbol.tolist() == served
