"""The collector's keyed appends with memory (Appender): no re-read per batch, yet no duplicate when another writer
(or a restart) changed the table meanwhile, and the trades floor."""

from __future__ import annotations

import pandas as pd

from ibf_core.storage.warehouse import Warehouse
from ibf_core.streaming.store import Appender, append_rows
from ibf_core.streaming.tables import INTRADAY_BARS, TRADES

T0 = pd.Timestamp("2013-02-28 15:00", tz="UTC")


def _bars(seconds: list[int], symbol: str = "AAPL") -> pd.DataFrame:
    return pd.DataFrame([{"symbol": symbol, "date": pd.Timestamp("2013-02-28"), "time": T0 + pd.Timedelta(seconds=s),
                          "what": "TRADES", "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": float(s),
                          "wap": 1.2, "count": 1, "received_at": T0} for s in seconds])


def test_appends_remember_keys_and_re_read_after_another_writer(tmp_path):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()
    mine = Appender(store, INTRADAY_BARS)
    assert mine.append(_bars([0, 5])) == 2
    assert mine.append(_bars([5, 10, 10])) == 1  # 5 stored already, 10 twice in the batch
    assert append_rows(store, INTRADAY_BARS, _bars([15, 20])) == 2  # another writer (a restarted collector)
    assert mine.append(_bars([20, 25])) == 1  # its 20 is seen: the table's stamp changed, so it re-read
    assert mine.append(_bars([0, 30], symbol="MSFT")) == 2
    stored = store.query("SELECT symbol, time, volume FROM intraday_bars ORDER BY symbol, time")
    assert stored.groupby("symbol").size().to_dict() == {"AAPL": 6, "MSFT": 2}
    assert stored[stored.symbol == "AAPL"].volume.tolist() == [0, 5, 10, 15, 20, 25]


def test_trades_before_the_newest_stored_second_are_dropped(tmp_path):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()

    def trades(rows):
        return pd.DataFrame([{"symbol": "AAPL", "date": pd.Timestamp("2013-02-28"), "time": T0 + pd.Timedelta(seconds=s),
                              "seq": q, "price": p, "size": 100.0, "exchange": "ARCA", "special_conditions": "",
                              "received_at": T0} for s, p, q in rows])

    appender = Appender(store, TRADES, floor="time")
    assert appender.append(trades([(1, 10.0, 0), (2, 10.0, 0)])) == 2
    # A replay: second 1 (before the newest stored) is all stored; second 2 gets a second identical trade (seq 1).
    assert appender.append(trades([(1, 10.5, 0), (2, 10.0, 0), (2, 10.0, 1), (3, 11.0, 0)])) == 2
    assert len(store.query("SELECT * FROM trades")) == 4
