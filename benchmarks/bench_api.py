"""REST API benchmark (printed, not asserted): stored predictions of N symbols, C concurrent clients for S seconds
on POST /predict (10 symbols x 6 horizons) and GET /rankings, then fresh predictions (optional, --fresh).

The server is `ibf serve` in its own process (one uvicorn worker); the clients are asyncio + httpx in this process,
on the same machine (both share its cores).

    .venv/bin/python benchmarks/bench_api.py [--symbols 500 --clients 100 --seconds 30] [--fresh]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "ibf_dagster.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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


async def load(url: str, make_request, clients: int, seconds: float) -> dict:
    """``clients`` loops sending requests for ``seconds``; latencies of the successful ones, error count."""
    import httpx

    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        # warm: the first request reads the newest origin into memory
        await make_request(client)

        async def one_client() -> None:
            nonlocal errors
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    response = await make_request(client)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.monotonic() - started
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99)}


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
    proc = start_server(env, args.port + 1)
    try:
        url = f"http://127.0.0.1:{args.port + 1}"
        times = []
        for i in range(6):
            start = time.perf_counter()
            r = httpx.post(f"{url}/predict", json={"symbols": symbols, "fresh": True}, headers=HEADERS, timeout=300)
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text[:300]
            assert r.json()["as_of"] == newest and len(r.json()["predictions"]) == 6 * len(symbols)
        print(f"\nPOST /predict fresh, {len(symbols)} symbols x 6 horizons (GBDT + baselines + ensemble, origin {newest}):")
        print(f"first call (downloads and loads the bundle) {times[0]:.2f} s; then median {np.median(times[1:]):.2f} s, "
              f"max {max(times[1:]):.2f} s over {len(times) - 1} calls")
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
    started = time.perf_counter()
    world = write_stored_world(home, symbols, "2021-01-04", "2021-03-31")
    print(f"stored world: {args.symbols} symbols x {len(world['days'])} origins x 6 horizons "
          f"({len(world['predictions'])} prediction rows) in {time.perf_counter() - started:.1f} s")
    rng = random.Random(7)

    async def predict(client):
        return await client.post("/predict", json={"symbols": rng.sample(symbols, 10), "horizons": [1, 3, 5, 10, 15, 20]}, headers=HEADERS)

    async def rankings(client):
        return await client.get("/rankings", params={"horizon": rng.choice([1, 5, 20]), "top": 20}, headers=HEADERS)

    proc = start_server(env, args.port)
    try:
        url = f"http://127.0.0.1:{args.port}"
        print(f"\n{args.clients} concurrent clients, {args.seconds:.0f} s each, one uvicorn worker, {os.cpu_count()} cores")
        print("| endpoint | requests | errors | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, make in (("POST /predict (10 symbols x 6 horizons, stored)", predict), ("GET /rankings (top 20)", rankings)):
            r = asyncio.run(load(url, make, args.clients, args.seconds))
            print(f"| {name} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} |")
        r = asyncio.run(load(url, predict, 1, 10))
        print(f"| POST /predict, one client (latency without queueing) | {r['requests']} | {r['errors']} | {r['rps']:.0f} | "
              f"{r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} |")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
