"""Benchmark: ``microstructure_daily`` for N symbols x one full session (4,680 5-second bars and 4,680 quotes each,
the gateway simulator's deterministic sessions) stored in the lake: the read of the live partitions, the
vectorized computation over all symbols at once, and, as the baseline on the same data, one call per symbol.

    .venv/bin/python benchmarks/bench_microstructure.py [--symbols 100 --repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_of  # noqa: E402 (benchmarks/ is the script folder on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import pandas as pd

    from ibf_core.sim.intraday import DailyBar, five_second_bars, quotes
    from ibf_core.storage.warehouse import Warehouse
    from ibf_core.streaming.microstructure import microstructure_daily, sessions_from_store
    from ibf_core.streaming.store import append_rows
    from ibf_core.streaming.tables import INTRADAY_BARS, QUOTES

    day = dt.date(2013, 2, 28)
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    bar_frames, quote_frames = [], []
    for i, symbol in enumerate(symbols):
        close = 20.0 + i
        daily = DailyBar(symbol, day, close * 0.99, close * 1.02, close * 0.98, close, 1e6 + 1e4 * i)
        trades = five_second_bars(daily)
        book = quotes(daily, trades)
        now = pd.Timestamp.now(tz="UTC")
        bar_frames.append(trades.assign(symbol=symbol, date=pd.Timestamp(day), what="TRADES", received_at=now))
        quote_frames.append(book.assign(symbol=symbol, date=pd.Timestamp(day), volume=trades["volume"].cumsum().to_numpy(),
                                        delayed=False, received_at=now))
    bars, book = pd.concat(bar_frames, ignore_index=True), pd.concat(quote_frames, ignore_index=True)
    with tempfile.TemporaryDirectory() as home:
        store = Warehouse(Path(home))
        store.ensure_all_tables()
        append_rows(store, INTRADAY_BARS, bars)
        append_rows(store, QUOTES, book)
        after_close = pd.Timestamp("2013-03-01 00:00", tz="UTC")
        t_all, stored = best_of(args.repeat, lambda: sessions_from_store(store, symbols, day, day, now=after_close)[0])
        t_read, _ = best_of(args.repeat, lambda: (store.read_partitions(INTRADAY_BARS).to_pandas(),
                                                  store.read_partitions(QUOTES).to_pandas()))
    t_batch, batched = best_of(args.repeat, lambda: microstructure_daily(bars, book))
    by_symbol = {s: (g, book[book["symbol"] == s]) for s, g in bars.groupby("symbol")}
    t_loop, looped = best_of(args.repeat, lambda: pd.concat([microstructure_daily(b, q) for b, q in by_symbol.values()]))
    same = (batched.set_index("symbol").sort_index()["kyle_lambda"] - looped.set_index("symbol").sort_index()["kyle_lambda"]).abs().max()
    assert len(stored) == args.symbols and same < 1e-9
    print(f"microstructure_daily, {args.symbols} symbols x 1 session ({len(bars):,} bars + {len(book):,} quotes), best of {args.repeat}:")
    print("| step | seconds |\n|---|---:|")
    print(f"| read the live partitions | {t_read:.3f} |")
    print(f"| compute, all symbols in one call | {t_batch:.3f} |")
    print(f"| compute, one call per symbol (baseline) | {t_loop:.3f} |")
    print(f"| read + compute (what the asset runs) | {t_all:.3f} |")
    print(f"batched vs per-symbol: {t_loop / t_batch:.1f}x")


if __name__ == "__main__":
    main()
