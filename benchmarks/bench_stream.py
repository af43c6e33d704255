"""Benchmark: sustained ingest of N symbols x 5-second bars + quotes from the gateway simulator at S x real speed
through `ibf stream` (its own process): rows/s, receipt -> queryable lag p50/p99, the collector's CPU and peak RSS.

The simulator streams a sample session (AAPL/GOOG/IBM/MSFT's 2013-02-28 under N symbol names) from 10:00 New York.
IB allows 60 real-time-bar requests per 10 minutes; with more than 60 symbols both the simulator and the collector
are told a higher limit here (IBF_IB_REALTIME_BARS_PER_10MIN), which a real account does not have.

    .venv/bin/python benchmarks/bench_stream.py [--symbols 100 --speed 20 --seconds 60]

Measured on a 2-core machine shared with other work (defaults): re-reading each touched partition per batch
(before ibf_core.streaming.store.Appender): 760 rows/s, lag p50 4.35 s, p99 7.53 s, 71% of a core; with the
appender's memory of stored keys: 766 rows/s, p50 1.35 s, p99 2.58 s, 51% of a core. rows/s is what the simulator
sends (100 symbols x 2 rows per 5 market seconds at 20x = 800/s), not a ceiling; what is left of the lag is the
1 s flush interval and one Parquet file swap per touched partition.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    import pandas as pd

    from ibf_core.sim.ib.live import LiveClock, session_start
    from ibf_core.sim.ib.gateway import GatewaySimulator
    from ibf_core.sources.sample import load_sample_bars
    from ibf_core.storage.warehouse import Warehouse

    sample = load_sample_bars()
    names = [f"S{k:03d}" for k in range(args.symbols)]
    bases = ["AAPL", "GOOG", "IBM", "MSFT"]
    bars = pd.concat([sample[sample.symbol == bases[k % 4]].assign(symbol=name) for k, name in enumerate(names)])
    clock = LiveClock(session_start(dt.date(2013, 2, 28)) + dt.timedelta(minutes=30), speed=args.speed)
    limit = max(60, args.symbols)
    with tempfile.TemporaryDirectory(prefix="ibf-bench-stream-") as home, \
            GatewaySimulator(bars, {"realtime_bar_requests_per_10min": limit, "max_market_data_lines": limit},
                             live_clock=clock) as sim:
        env = {**os.environ, "IBF_HOME": home, "IBF_IB_PORTS": str(sim.port), "IBF_IB_MAX_LINES": str(limit),
               "IBF_IB_REALTIME_BARS_PER_10MIN": str(limit), "IBF_UNIVERSE": ",".join(names), "IBF_CONFIG": "/nonexistent"}
        ibf = str(Path(sys.executable).with_name("ibf"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        begin = time.perf_counter()
        done = subprocess.run([ibf, "stream", "--duration", str(args.seconds)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - begin
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        store = Warehouse(home)
        n_bars = int(store.query("SELECT count(*) AS n FROM intraday_bars").n.iloc[0])
        n_quotes = int(store.query("SELECT count(*) AS n FROM quotes").n.iloc[0])
    lag = re.search(r"p50 ([\d.]+) s, p99 ([\d.]+) s", done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{args.symbols} symbols, {args.speed:g}x real speed, {args.seconds:g} s of collection ({wall:.1f} s with start-up)")
    print("| rows stored | bars | quotes | rows/s | receipt -> queryable p50 | p99 | collector CPU | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n_bars + n_quotes:,} | {n_bars:,} | {n_quotes:,} | {(n_bars + n_quotes) / args.seconds:,.0f} | "
          f"{lag[1]} s | {lag[2]} s | {cpu / wall:.0%} of a core | {after.ru_maxrss / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
