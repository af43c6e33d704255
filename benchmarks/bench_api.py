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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    from ibf_serve.testing import write_stored_world

    home = Path(tempfile.mkdtemp(prefix="ibf-bench-api-")) / "ibf_home"
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    started = time.perf_counter()
    world = write_stored_world(home, symbols, "2021-01-04", "2021-03-31")
    print(f"stored world: {args.symbols} symbols x {len(world['days'])} origins x 6 horizons "
          f"({len(world['predictions'])} prediction rows) in {time.perf_counter() - started:.1f} s")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBF_")}
    env.update(IBF_HOME=str(home), IBF_CONFIG=str(home / "none.toml"), IBF_UNIVERSE=",".join(symbols),
               IBF_API_KEYS=hashlib.sha256(KEY.encode()).hexdigest(), IBF_API_RATE_LIMIT="0", IBF_API_MAX_SYMBOLS="500",
               PYTHONPATH=str(ROOT))
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
