"""REST API benchmark (printed, not asserted): stored predictions of N symbols, C concurrent clients for S seconds
on POST /predict (10 random symbols x 6 horizons) and GET /rankings, with and without a concurrent `ibf backfill`
(market_bars + features of every symbol, from a CSV, in a loop), then fresh predictions (optional, --fresh).

The server is `ibf serve --workers W` in its own processes; the load generator is wrk (C, keep-alive
connections, one per client; `make bench-api` installs it from Debian), on the same machine: it shares the cores.

    .venv/bin/python benchmarks/bench_api.py [--symbols 500 --clients 100 --seconds 30 --workers 1,2] [--fresh]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def start_server(env: dict[str, str], port: int, workers: int = 1) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ibf")), "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ibf serve did not start")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


# wrk script: one request shape per run, random symbols per request; prints one parsable line at the end.
WRK_SCRIPT = """
local symbols = {%(symbols)s}
local mode = "%(mode)s"
local headers = {["Authorization"] = "Bearer %(key)s", ["Content-Type"] = "application/json"}
local horizons = {1, 5, 20}
local threads = 0
setup = function(thread) thread:set("id", threads); threads = threads + 1 end
init = function(args) math.randomseed(%(seed)d + id) end
-- Requests are built once per thread (1,000 random ones, cycled): building each one in Lua costs the load
-- generator enough CPU, on cores it shares with the server, to show up as server latency.
local prepared, next_one = {}, 0
local function build()
  if mode == "rankings" then
    return wrk.format("GET", "/rankings?top=20&horizon=" .. horizons[math.random(3)], headers)
  end
  local picked, seen = {}, {}
  while #picked < 10 do
    local s = symbols[math.random(#symbols)]
    if not seen[s] then seen[s] = true; picked[#picked + 1] = '"' .. s .. '"' end
  end
  return wrk.format("POST", "/predict", headers, '{"symbols":[' .. table.concat(picked, ",") .. '],"horizons":[1,3,5,10,15,20]}')
end
request = function()
  if #prepared == 0 then for i = 1, 1000 do prepared[i] = build() end end
  next_one = next_one %% #prepared + 1
  return prepared[next_one]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f %%.3f %%.3f\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def load(url: str, mode: str, symbols: list[str], clients: int, seconds: float, work: Path) -> dict:
    """wrk with ``clients`` connections (each a client sending its next request when the last is answered)."""
    script = work / f"{mode}.lua"
    script.write_text(WRK_SCRIPT % {"symbols": ",".join(f'"{s}"' for s in symbols), "mode": mode, "key": KEY, "seed": 7})
    threads = max(1, min(2, clients))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:.0f}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    n, errors, micros, p50, p95, p99, worst = line.split()[1:]
    return {"requests": int(n), "errors": int(errors), "rps": int(n) / (int(micros) / 1e6),
            "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(worst)}


@contextlib.contextmanager
def backfilling(env: dict[str, str], csv: Path, symbols: list[str]) -> Iterator[list[int]]:
    """`ibf backfill` of market_bars and features of every symbol from ``csv``, again and again, until the block
    ends; yields the list the finished runs' exit codes go into."""
    done: list[int] = []
    stop_flag = threading.Event()

    def loop() -> None:
        while not stop_flag.is_set():
            proc = subprocess.Popen([str(Path(sys.executable).with_name("ibf")), "backfill", "--source", "csv", "--csv", str(csv),
                                     "--assets", "market_bars,features", "--start", "2021-01-04", "--end", "2021-03-31"],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            while proc.poll() is None:
                if stop_flag.wait(0.2):
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
                    return
            done.append(proc.returncode)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(8)  # the first run past Dagster's start-up, into the writes
    try:
        yield done
    finally:
        stop_flag.set()
        thread.join()


def fresh_world(home: Path, n_symbols: int, years: int) -> tuple[list[str], str]:
    """Generated bars (the real sample's paths) and their features for ``n_symbols``, one GBDT model registered
    with a cut-off 20 sessions before the end; returns the symbols and the newest feature session."""
    import mlflow

    from benchmarks.bench_backfill import generate
    from ibf_core.calendar import all_sessions
    from ibf_core.features.pipeline import compute_features
    from ibf_core.features.table import features_spec
    from ibf_core.models.inputs import train_from_warehouse
    from ibf_core.models.registry import ensure_experiment, log_and_register
    from ibf_core.settings import load_settings
    from ibf_core.storage.tables import MARKET_BARS
    from ibf_core.storage.warehouse import Warehouse

    bars = generate(n_symbols, years)
    symbols = sorted(bars["symbol"].unique())
    first, last = bars["date"].min(), bars["date"].max()
    store = Warehouse(home)
    store.ensure_all_tables()
    store.replace_slice(MARKET_BARS, bars.assign(source="csv"), symbols, first, last)
    store.replace_slice(features_spec(), compute_features(bars, benchmark=None), symbols, first, last)
    settings = load_settings(home=home, universe=symbols, model_members=["gbdt"], accelerator="cpu")
    sessions = all_sessions()
    cutoff = sessions[sessions.searchsorted(last) - 20].date()
    started = time.perf_counter()
    bundle = train_from_warehouse(store, settings, cutoff)
    ensure_experiment(settings.mlflow_uri, settings.mlflow_experiment, settings.mlflow_artifacts_dir)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.mlflow_experiment)
    with mlflow.start_run(), tempfile.TemporaryDirectory() as work:
        log_and_register(bundle, settings.model_name, Path(work))
    print(f"fresh world: {n_symbols} symbols x {years} years of generated bars + features, GBDT trained "
          f"(cut-off {cutoff}) in {time.perf_counter() - started:.1f} s")
    return symbols, last.date().isoformat()


def bench_fresh(args, env_base: dict[str, str]) -> None:
    import httpx

    if args.fresh_home:  # a world an earlier run built (training 500 symbols takes minutes)
        from ibf_core.features.table import features_spec
        from ibf_core.storage.warehouse import Warehouse

        home = Path(args.fresh_home)
        symbols = Warehouse(home).symbols(features_spec())
        newest = str(Warehouse(home).query("SELECT max(date) AS d FROM features")["d"].iloc[0].date())
    else:
        home = Path(tempfile.mkdtemp(prefix="ibf-bench-fresh-")) / "ibf_home"
        symbols, newest = fresh_world(home, args.symbols, args.fresh_years)
        print(f"(reuse it with --fresh-home {home})")
    env = {**env_base, "IBF_HOME": str(home), "IBF_UNIVERSE": ",".join(symbols)}
    proc = start_server(env, args.port + 1, int(args.workers.split(",")[-1]))
    try:
        url = f"http://127.0.0.1:{args.port + 1}"
        times = []
        for i in range(6):
            start = time.perf_counter()
            r = httpx.post(f"{url}/predict", json={"symbols": symbols, "fresh": True}, headers=HEADERS, timeout=300)
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text[:300]
            assert r.json()["as_of"] == newest and len(r.json()["predictions"]) == 6 * len(symbols)
        # A backfill swaps one symbol's features file in: the next calls read bars and features again.
        from ibf_core.features.table import features_spec
        from ibf_core.storage.warehouse import Warehouse

        store, spec = Warehouse(home), features_spec()
        one = store.read(spec, symbols[:1])
        store.replace_slice(spec, one, symbols[:1], one["date"].min(), one["date"].max())
        after = []
        for _ in range(2):  # one per worker, at most
            start = time.perf_counter()
            r = httpx.post(f"{url}/predict", json={"symbols": symbols, "fresh": True}, headers=HEADERS, timeout=300)
            after.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text[:300]
        print(f"\nPOST /predict fresh, {len(symbols)} symbols x 6 horizons (GBDT + baselines + ensemble, origin {newest}):")
        print(f"first call (downloads and loads the bundle) {times[0]:.2f} s; then median {np.median(times[1:]):.2f} s, "
              f"max {max(times[1:]):.2f} s over {len(times) - 1} calls; after a write to the features: "
              f"{', '.join(f'{t:.2f}' for t in after)} s")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fresh", action="store_true", help="also measure fresh predictions for --symbols (trains a GBDT first)")
    parser.add_argument("--fresh-years", type=int, default=2)
    parser.add_argument("--fresh-home", help="reuse the fresh world an earlier --fresh run built")
    parser.add_argument("--skip-stored", action="store_true")
    parser.add_argument("--skip-backfill", action="store_true", help="leave out the run with a concurrent backfill")
    parser.add_argument("--workers", default="1,2", help="comma list of ibf serve worker counts to measure")
    args = parser.parse_args()

    from ibf_serve.testing import write_stored_world

    home = Path(tempfile.mkdtemp(prefix="ibf-bench-api-")) / "ibf_home"
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBF_")}
    env.update(IBF_HOME=str(home), IBF_CONFIG=str(home / "none.toml"), IBF_UNIVERSE=",".join(symbols),
               IBF_API_KEYS=hashlib.sha256(KEY.encode()).hexdigest(), IBF_API_RATE_LIMIT="0", IBF_API_MAX_SYMBOLS="500",
               PYTHONPATH=str(ROOT))
    if args.fresh:
        bench_fresh(args, env)
    if args.skip_stored:
        return
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed: make bench-api installs it (apt-get install wrk)")
    started = time.perf_counter()
    world = write_stored_world(home, symbols, "2021-01-04", "2021-03-31")
    print(f"stored world: {args.symbols} symbols x {len(world['days'])} origins x 6 horizons "
          f"({len(world['predictions'])} prediction rows) in {time.perf_counter() - started:.1f} s")
    csv = home.parent / "bars.csv"
    world["bars"].drop(columns="source").to_csv(csv, index=False)
    work = home.parent
    print(f"\n{args.clients} concurrent clients (wrk connections), {args.seconds:.0f} s each, {os.cpu_count()} cores shared "
          "by server, wrk and the backfill")
    print("| workers | endpoint | concurrent backfill | requests | errors | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for workers in [int(w) for w in args.workers.split(",")]:
        proc = start_server(env, args.port, workers)
        try:
            url = f"http://127.0.0.1:{args.port}"
            load(url, "predict", symbols, 10, 2, work)  # warm: every worker reads the newest origin once
            cases = [("predict", False, args.clients), ("rankings", False, args.clients)]
            if not args.skip_backfill:
                cases += [("predict", True, args.clients)]
            cases += [("predict", False, 1)]
            for mode, with_backfill, clients in cases:
                name = {"predict": "POST /predict (10 symbols x 6 horizons, stored)", "rankings": "GET /rankings (top 20)"}[mode]
                if clients == 1:
                    name += ", one client"
                with (backfilling(env, csv, symbols) if with_backfill else contextlib.nullcontext([])) as runs:
                    r = load(url, mode, symbols, clients, args.seconds, work)
                note = f"yes ({len(runs)} runs finished, exit {sorted(set(runs))})" if with_backfill else "no"
                print(f"| {workers} | {name} | {note} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | {r['p50']:.1f} | "
                      f"{r['p95']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |", flush=True)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
