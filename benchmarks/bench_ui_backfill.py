"""UI-style backfill vs `ibf backfill` of the same symbol x month rectangle, on one Postgres-backed instance
(printed, not asserted).

The topology runs as `ibf stack up` runs it (local PostgreSQL, MLflow server, gRPC code location, webserver,
daemon, API). The UI path is the webserver's GraphQL `launchPartitionBackfill` (what the partition dialog sends),
executed by the daemon's run workers; the CLI path is `ibf backfill` (one in-process run per block of symbols).
Bars are generated from the real sample paths and read from a CSV (IBF_SOURCE=csv).

    .venv/bin/python benchmarks/bench_ui_backfill.py [--symbols 20 --months 12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--months", type=int, default=12, help="with --years 1: the first N months")
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--granularity", default="month", choices=["month", "year"])
    args = parser.parse_args()

    import pandas as pd

    from benchmarks.bench_backfill import generate
    from ibf_core.settings import load_settings
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import sync_universe
    from ibf_dagster.stack import backfills
    from ibf_dagster.stack.run import stack

    work = Path(tempfile.mkdtemp(prefix="ibf-bench-ui-"))
    bars = generate(args.symbols, args.years)
    if args.years == 1:
        bars = bars[bars["date"] < bars["date"].min() + pd.DateOffset(months=args.months)]
    symbols = sorted(bars["symbol"].unique())
    start, end = bars["date"].min().date(), bars["date"].max().date()
    csv = work / "bars.csv"
    bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d")).to_csv(csv, index=False)
    pattern = "%Y-%m" if args.granularity == "month" else "%Y"
    months = sorted({d.strftime(pattern) for d in pd.to_datetime(bars["date"])})
    # The services of the stack read their settings from the environment, like every ibf process.
    from ibf_core.settings import export_to_children

    export_to_children({"IBF_HOME": str(work / "ibf_home"), "IBF_CONFIG": str(work / "none.toml"),
                        "IBF_UNIVERSE": ",".join(symbols), "IBF_SOURCE": "csv", "IBF_CSV_PATH": str(csv),
                        "IBF_HISTORY_START": str(start), "IBF_DATE_PARTITIONS": args.granularity})
    settings = load_settings()
    print(f"rectangle: {len(symbols)} symbols x {len(months)} {args.granularity}s = {len(symbols) * len(months)} partitions "
          f"({len(bars):,} bars, {start}..{end}), asset market_bars, Postgres instance")
    with stack(settings) as running:
        web = running.urls["webserver"]
        sync_universe(get_instance(running.settings), symbols)
        env = running.env
        ibf = str(Path(sys.executable).with_name("ibf"))
        begin = time.perf_counter()
        done = subprocess.run([ibf, "backfill", "--start", str(start), "--end", str(end), "--assets", "market_bars"],
                              env=env, capture_output=True, text=True)
        cli_s = time.perf_counter() - begin
        if done.returncode != 0:
            raise SystemExit(f"ibf backfill failed: {done.stderr[-2000:]}")

        keys = [f"{m}|{s}" for m in months for s in symbols]
        begin = time.perf_counter()
        found = backfills.wait(web, backfills.launch(web, ["market_bars"], keys), timeout_s=3600, poll_s=1)
        ui_s = time.perf_counter() - begin
        runs = found["runs"]
        failed = [r for r in runs if r["status"] != "SUCCESS"]
        instance = get_instance(running.settings)
        landed = sum(instance.get_run_stats(r["runId"]).materializations for r in runs)
        print("| path | runs | wall time | vs `ibf backfill` |")
        print("|---|---:|---:|---:|")
        print(f"| `ibf backfill` (in-process run) | 1 | {cli_s:.1f} s | 1.0x |")
        print(f"| UI-style `launchPartitionBackfill` (daemon, run workers) | {len(runs)} | {ui_s:.1f} s | {ui_s / cli_s:.1f}x |")
        print(f"status {found['status']}, {len(failed)} failed runs, {landed:,} of {len(keys):,} partitions materialized")


if __name__ == "__main__":
    main()
