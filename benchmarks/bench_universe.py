"""A real universe end to end (printed, not asserted): load -> train -> two daily cycles -> fresh predictions.

Generated vendor-like bars (``make_messy_file.py``: OHLC glitches, vendor-wide missing sessions, gaps) for N
symbols x Y years go through the ``ibf`` CLI exactly as a user runs it, each step its own process:

1. ``ibf backfill --csv FILE_TO_D0 --end D0 --assets market_bars,features`` (everything but the last two sessions);
2. ``ibf train --cutoff C`` with the configured members (default: all four, with feature importance), C the
   last session before the month of the last two sessions (date partitions are months: a model must precede
   every origin of the month it predicts);
3. predictions and drift_scores from the month's first session to D0 (what a running platform already has);
4. the daily cycle for D1, then for D2 (the month's last sessions: the costliest days of a monthly partition):
   ``ibf backfill --csv FILE_TO_D --start D --end D --assets market_bars,features,predictions,drift_scores``;
   every step reads the file as it stood at its session's close (``bars_to_<D>.csv``), so each cycle has a
   new session to load, compute, forecast and score;
5. ``POST /predict {"fresh": true}`` for every symbol against ``ibf serve`` (started before the daily cycles):
   its first call (loading the bundle), then the first call after the daily cycles wrote features, then another.

Each row: wall seconds and the peak RSS of the step's process tree (``wait4``: the largest of the command and the
children it waited for). Training's own phases (bundle facts) follow.

    .venv/bin/python benchmarks/bench_universe.py --symbols 500 --years 1 [--members gbdt,gbdt_rank] [--warehouse ducklake] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import HEADERS, KEY, start_server, stop  # noqa: E402

IBF = str(Path(sys.executable).with_name("ibf"))
DAILY = "market_bars,features,predictions,drift_scores"


def measured(command: list[str], env: dict[str, str], label: str, rows: list[tuple]) -> None:
    """Run one CLI step; record (label, seconds, peak MiB); stop the benchmark on a failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    output = proc.stdout.read() if proc.stdout else ""
    code = os.waitstatus_to_exitcode(status)
    rows.append((label, seconds, usage.ru_maxrss / 1024))
    print(f"{label}: {seconds:.1f} s, peak {usage.ru_maxrss / 1024 / 1024:.2f} GiB (exit {code})", flush=True)
    if code != 0:
        print(output[-4000:])
        raise SystemExit(f"{label} failed with exit {code}")


def print_rows(title: str, rows: list[tuple]) -> None:
    """The measured steps as one Markdown table: label, seconds, peak RSS."""
    print(f"\n| {title} | seconds | peak RSS |")
    print("|---|---:|---:|")
    for label, seconds, mib in rows:
        print(f"| {label} | {seconds:.1f} | {mib / 1024:.2f} GiB |")


def sessions_of(csv: Path) -> list[str]:
    import pandas as pd

    return sorted(pd.read_csv(csv, usecols=["date"])["date"].unique())


def cut_files(csv: Path, days: tuple[str, ...]) -> dict[str, Path]:
    """The vendor file cut at the close of each of ``days``: ``bars_to_<day>.csv`` beside it."""
    import pandas as pd

    frame = pd.read_csv(csv, dtype=str)
    out = {}
    for day in days:
        out[day] = csv.with_name(f"bars_to_{day}.csv")
        frame[frame["date"] <= day].to_csv(out[day], index=False)
    return out


def fresh_call(port: int, symbols: list[str], label: str, rows: list[tuple], server: subprocess.Popen) -> None:
    """One ``POST /predict {"fresh": true}`` for every symbol, timed; the server's RSS after it."""
    import httpx

    started = time.perf_counter()
    reply = httpx.post(f"http://127.0.0.1:{port}/predict", json={"symbols": symbols, "fresh": True}, headers=HEADERS, timeout=600)
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        raise SystemExit(f"{label}: HTTP {reply.status_code}: {reply.text[:300]}")
    rss = _tree_rss_mib(server.pid)
    rows.append((label, seconds, rss))
    print(f"{label}: {seconds:.2f} s ({len(reply.json()['predictions'])} rows), server RSS {rss:.0f} MiB", flush=True)


def _tree_rss_mib(pid: int) -> float:
    """RSS now of a process and its children (the server's workers)."""
    from ibf_core.processes import rss_mib

    total = rss_mib(pid) or 0.0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for kid in child.read_text().split():
            total += _tree_rss_mib(int(kid))
    return total


def training_phases(home: Path) -> dict:
    """The newest bundle's recorded phases (seconds, peak RSS) and memory estimate."""
    bundles = sorted(home.rglob("bundle.json"), key=lambda p: p.stat().st_mtime)
    if not bundles:
        return {}
    return json.loads(bundles[-1].read_text()).get("facts", {}).get("resources", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--members", default=None, help="IBF_MODEL_MEMBERS (default: the settings' default, all four)")
    parser.add_argument("--granularity", default="month", help="IBF_DATE_PARTITIONS")
    parser.add_argument("--warehouse", choices=("lake", "ducklake"), default="lake", help="IBF_WAREHOUSE")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ibf-bench-universe-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "ibf_home"
    csv = work / "bars.csv"
    rows: list[tuple] = []
    try:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_messy_file.py"), "--symbols", str(args.symbols),
                        "--sessions", str(252 * args.years), "--out", str(csv), "--manifest", str(work / "manifest.json")],
                       check=True, stdout=subprocess.DEVNULL)
        days = sessions_of(csv)
        d0, d1, d2 = days[-3], days[-2], days[-1]
        month = [d for d in days if d[:7] == d1[:7]]
        cutoff = days[days.index(month[0]) - 1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IBF_")}
        env.update(IBF_HOME=str(home), IBF_CONFIG=str(work / "none.toml"), IBF_HISTORY_START=days[0],
                   IBF_DATE_PARTITIONS=args.granularity, IBF_ACCELERATOR=os.environ.get("IBF_ACCELERATOR", "cpu"),
                   IBF_API_KEYS=hashlib.sha256(KEY.encode()).hexdigest(), IBF_API_RATE_LIMIT="0",
                   IBF_API_MAX_SYMBOLS=str(max(500, args.symbols)), IBF_WAREHOUSE=args.warehouse)
        if args.members:
            env["IBF_MODEL_MEMBERS"] = args.members
        print(f"{args.symbols} symbols x {len(days)} sessions ({days[0]}..{days[-1]}), {args.warehouse} warehouse; work folder {work}", flush=True)
        # Each step reads the vendor file as it stood at its session's close: a monthly market_bars partition
        # loads every session of the month the file holds, so the whole file would load the daily cycles' sessions
        # with the first step and leave them nothing new to do.
        files = cut_files(csv, (d0, d1, d2))
        measured([IBF, "backfill", "--csv", str(files[d0]), "--end", d0, "--assets", "market_bars,features"], env,
                 f"load (market_bars, features) up to {d0}", rows)
        measured([IBF, "train", "--cutoff", cutoff], env, f"ibf train --cutoff {cutoff}", rows)
        if month[0] <= d0:
            measured([IBF, "backfill", "--csv", str(files[d0]), "--start", month[0], "--end", d0, "--assets", "predictions,drift_scores"],
                     env, f"predictions, drift_scores {month[0]}..{d0}", rows)
        from ibf_core.features.table import features_spec
        from ibf_core.settings import load_settings
        from ibf_core.storage.backends import open_warehouse

        store = open_warehouse(load_settings(home=home, warehouse=args.warehouse), reader=True)
        symbols = store.symbols(features_spec())
        getattr(store, "close", lambda: None)()  # no connection of this process stays attached while the CLI writes
        env["IBF_UNIVERSE"] = ",".join(symbols)
        if args.keep is not None:  # the state before the daily cycles, to profile or repeat them
            shutil.rmtree(work / "home_before_cycles", ignore_errors=True)
            shutil.copytree(home, work / "home_before_cycles", symlinks=True)
        server = start_server(env, args.port)  # serving while the daily cycles write, as in production
        try:
            fresh_call(args.port, symbols, "POST /predict fresh, first call of the server (loads the bundle)", rows, server)
            for day in (d1, d2):
                measured([IBF, "backfill", "--csv", str(files[day]), "--start", day, "--end", day, "--assets", DAILY], env,
                         f"daily cycle {day} ({DAILY})", rows)
            fresh_call(args.port, symbols, "POST /predict fresh, first call after the features write", rows, server)
            fresh_call(args.port, symbols, "POST /predict fresh, second call", rows, server)
        finally:
            stop(server)
        resources = training_phases(home)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print_rows(f"step ({args.symbols} symbols x {args.years} year(s), {args.warehouse})", rows)
    if resources:
        print("\n| training phase | seconds | peak RSS |")
        print("|---|---:|---:|")
        for phase, record in resources.get("phases", {}).items():
            print(f"| {phase} | {record.get('seconds', 0):.1f} | {record.get('peak_rss_mib', 0) / 1024:.2f} GiB |")
        estimate = resources.get("estimate_mib", {})
        print(f"\nestimated peak before training: {sum(estimate.values()) / 1024:.2f} GiB {estimate}")


if __name__ == "__main__":
    main()
