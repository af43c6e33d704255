"""Benchmark: load N symbols x Y years through `ibf backfill` vs a bare script inserting the same frame into DuckDB.

The bars are generated from the real sample: each synthetic symbol replays a real AAPL/IBM/MSFT daily path
(OHLC relative to close, volume) from a random offset, re-dated onto the last Y years of NYSE sessions up to
2012-12-31 and rescaled. Prints wall times, rows/s and the ratios against the bare DuckDB insert.

    .venv/bin/python benchmarks/bench_backfill.py --symbols 500 --years 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibf_core.calendar import trading_days  # noqa: E402
from ibf_core.sources.sample import load_sample_bars  # noqa: E402


def generate(n_symbols: int, years: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = trading_days(pd.Timestamp("2012-12-31") - pd.DateOffset(years=years) + pd.Timedelta(days=1), "2012-12-31")
    sample = load_sample_bars()
    bases = [sample[sample.symbol == s].reset_index(drop=True) for s in ("AAPL", "IBM", "MSFT")]
    frames = []
    for k in range(n_symbols):
        base = bases[k % len(bases)]
        idx = (rng.integers(0, len(base)) + np.arange(len(days))) % len(base)
        rows = base.iloc[idx].reset_index(drop=True)
        logret = np.log(rows.close).diff().fillna(0).to_numpy()
        logret[np.abs(logret) > 0.4] = 0.0  # the circular wrap-around is not a real return
        close = rng.uniform(10, 300) * np.exp(np.cumsum(logret))
        scale = close / rows.close.to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    "date": days,
                    "symbol": f"S{k:04d}",
                    "open": rows.open.to_numpy() * scale,
                    "high": rows.high.to_numpy() * scale,
                    "low": rows.low.to_numpy() * scale,
                    "close": close,
                    "adj_close": close,
                    "volume": rows.volume.to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bare_duckdb(path: Path, db: Path) -> int:
    """The simple baseline: read the file, insert the frame into a DuckDB table."""
    frame = pd.read_parquet(path)
    with duckdb.connect(str(db)) as con:
        con.register("frame", frame)
        con.execute("CREATE OR REPLACE TABLE market_bars AS SELECT * FROM frame")
        return con.execute("SELECT count(*) FROM market_bars").fetchone()[0]


def _store(home: Path, warehouse: str):
    from ibf_core.settings import load_settings
    from ibf_core.storage.backends import open_warehouse

    return open_warehouse(load_settings(home=home, warehouse=warehouse))


def ibf_library(path: Path, home: Path, symbols: list[str], start, end, warehouse: str = "lake") -> int:
    """ibf without Dagster: CsvSource (full validation, split check) + the warehouse's slice replace."""
    from ibf_core.market.ingest import load_market_bars
    from ibf_core.sources.csv import CsvSource

    return load_market_bars(CsvSource(path), _store(home, warehouse), symbols, start, end).write.rows_written


def reads(home: Path, warehouse: str) -> tuple[float, float]:
    """Seconds to read the whole table, and to run an aggregate over it through SQL (fresh process state)."""
    from ibf_core.storage.tables import MARKET_BARS

    store = _store(home, warehouse)
    t_read, frame = timed(lambda: store.read(MARKET_BARS))
    t_sql, _ = timed(lambda: store.query("SELECT symbol, avg(close) AS c, count(*) AS n FROM market_bars GROUP BY 1"))
    assert len(frame)
    return t_read, t_sql


FLOOR = """
import sys, time
import dagster as dg
from ibf_core.settings import load_settings
from ibf_dagster.compat import partition_range_tags
from ibf_dagster.instance import get_instance
from ibf_dagster.partitions import symbol_date_partitions

settings = load_settings()
instance = get_instance(settings)
symbols = sys.argv[1].split(",")
instance.add_dynamic_partitions("symbol", symbols)
partitions = symbol_date_partitions(settings)

@dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
def noop(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partitions": len(context.partition_keys)})

by_date = next(d for d in partitions.partitions_defs if d.name == "date").partitions_def
dates = [d for d in by_date.get_partition_keys() if sys.argv[2] <= d <= sys.argv[3]]
first = dg.MultiPartitionKey({"date": dates[0], "symbol": symbols[0]})
last = dg.MultiPartitionKey({"date": dates[-1], "symbol": symbols[-1]})
job = dg.Definitions(assets=[noop]).resolve_implicit_global_asset_job_def()
started = time.perf_counter()
assert job.execute_in_process(instance=instance, tags=partition_range_tags(first, last)).success
print(time.perf_counter() - started, len(dates) * len(symbols))
"""


def dagster_floor(home: Path, symbols: list[str], start: str, end: str, granularity: str, pg_url: str | None = None) -> tuple[float, int]:
    """Dagster's own floor: one range run of a no-op asset over the same symbol x date partitions on the same kind
    of instance (ibf's SQLite event log or Postgres), timed inside the process: (seconds, partitions)."""
    env = {**os.environ, "IBF_HOME": str(home), "IBF_UNIVERSE": ",".join(symbols),
           "IBF_HISTORY_START": start, "IBF_DATE_PARTITIONS": granularity}
    if pg_url:
        env["IBF_DAGSTER_PG_URL"] = pg_url
    first, last = _date_key(start, granularity), _date_key(end, granularity)
    proc = subprocess.run([sys.executable, "-c", FLOOR, ",".join(symbols), first, last], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"floor run failed: {proc.stderr[-2000:]}")
    seconds, partitions = proc.stdout.split()[-2:]
    return float(seconds), int(partitions)


def _date_key(day: str, granularity: str) -> str:
    return {"day": day, "month": day[:7], "year": day[:4]}[granularity]


def ibf_backfill(path: Path, home: Path, symbols: list[str], start: str, end: str, granularity: str,
                 pg_url: str | None = None, warehouse: str = "lake", assets: str = "market_bars") -> float:
    """`ibf backfill` as a user runs it: a Dagster run on the persistent instance under IBF_HOME (SQLite), or on
    the Postgres instance at ``pg_url``."""
    env = {**os.environ, "IBF_HOME": str(home), "IBF_UNIVERSE": ",".join(symbols),
           "IBF_HISTORY_START": start, "IBF_DATE_PARTITIONS": granularity, "IBF_WAREHOUSE": warehouse}
    if pg_url:
        env["IBF_DAGSTER_PG_URL"] = pg_url
    ibf = str(Path(sys.executable).with_name("ibf"))
    subprocess.run([ibf, "universe", "list"], env=env, check=True, capture_output=True)  # registers the universe
    begin = time.perf_counter()
    proc = subprocess.run([ibf, "backfill", "--csv", str(path), "--start", start, "--end", end, "--assets", assets],
                          env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - begin
    if proc.returncode != 0:
        raise SystemExit(f"ibf backfill failed: {proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--granularity", default="year", choices=["day", "month", "year"])
    parser.add_argument("--skip-dagster", action="store_true", help="only the baseline and the library path")
    parser.add_argument("--instance", default="sqlite", help="comma list: sqlite, postgres (a throw-away local PostgreSQL)")
    parser.add_argument("--warehouse", default="lake", help="comma list: lake, ducklake (SQLite catalog under the home)")
    parser.add_argument("--assets", default="market_bars",
                        help="what `ibf backfill` materializes (market_bars: what the library path writes; * the default data assets)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ibf-bench-") as tmp:
        tmp = Path(tmp)
        frame = generate(args.symbols, args.years)
        data = tmp / "bars.parquet"
        frame.assign(date=frame.date.dt.strftime("%Y-%m-%d")).to_parquet(data, index=False)
        rows = len(frame)
        symbols = sorted(frame.symbol.unique())
        start, end = frame.date.min().date(), frame.date.max().date()
        print(f"data: {args.symbols} symbols x {args.years} years = {rows:,} rows ({start}..{end})")

        t_bare, n = timed(lambda: bare_duckdb(data, tmp / "bare.duckdb"))
        assert n == rows
        results = {"rows": rows, "symbols": args.symbols, "years": args.years, "bare_duckdb_s": t_bare}
        print(f"{'bare DuckDB insert':32s} {t_bare:8.2f} s  {rows / t_bare:12,.0f} rows/s  1.00x")
        t_lib = None
        for warehouse in args.warehouse.split(","):
            home = tmp / f"lib_home_{warehouse}"
            t_w, n = timed(lambda: ibf_library(data, home, symbols, start, end, warehouse))
            assert n == rows
            t_lib = t_lib or t_w
            t_read, t_sql = reads(home, warehouse)
            results.update({f"ibf_library_{warehouse}_s": t_w, f"read_{warehouse}_s": t_read, f"sql_{warehouse}_s": t_sql})
            label = f"ibf library, {warehouse}"
            print(f"{label:32s} {t_w:8.2f} s  {rows / t_w:12,.0f} rows/s  {t_w / t_bare:5.2f}x   "
                  f"read all {t_read:.2f} s, SQL aggregate {t_sql:.2f} s")
        warehouse = args.warehouse.split(",")[-1]
        for instance in [] if args.skip_dagster else args.instance.split(","):
            with contextlib.ExitStack() as stack:
                url, server = None, None
                if instance == "postgres":
                    from ibf_dagster.stack.postgres import local_postgres

                    server = stack.enter_context(local_postgres())
                    url = server.create_database("dagster")
                t_dag = ibf_backfill(data, tmp / f"dag_home_{instance}", symbols, str(start), str(end), args.granularity,
                                     url, warehouse, args.assets)
                if server is not None:
                    url = server.create_database("floor")
                t_floor, partitions = dagster_floor(tmp / f"floor_home_{instance}", symbols, str(start), str(end), args.granularity, url)
            results.update({f"ibf_backfill_{instance}_{warehouse}_s": t_dag, "granularity": args.granularity,
                            f"dagster_floor_{instance}_s": t_floor, "partitions": partitions, "assets": args.assets})
            label = f"ibf backfill, {instance}, {warehouse} ({args.granularity}, {args.assets})"
            print(f"{label:32s} {t_dag:8.2f} s  {rows / t_dag:12,.0f} rows/s  {t_dag / t_bare:5.2f}x  "
                  f"{t_dag / t_lib:5.2f}x the library path")
            label = f"Dagster floor, {instance}: a no-op asset's range run of {partitions:,} partitions"
            print(f"{label:32s} {t_floor:8.2f} s  ({t_floor / t_lib:5.2f}x the library path)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
