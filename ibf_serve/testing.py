"""A real uvicorn server on a free loopback port, in a thread, always stopped (tests and the benchmark)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import uvicorn

from ibf_core.calendar import all_sessions, trading_days
from ibf_core.models import HORIZONS
from ibf_core.portfolio.costs import CostModel
from ibf_core.portfolio.spec import DEFAULT_PORTFOLIOS, Strategy
from ibf_core.portfolio.stored import refresh_portfolio
from ibf_core.processes import free_port  # noqa: F401 - the tests and the benchmark import it from here
from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS
from ibf_core.storage.warehouse import Warehouse


@contextlib.contextmanager
def running_server(app, port: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends (also on failure); yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def write_stored_world(home, symbols: list[str], start: str, end: str, seed: int = 0, version: str = "1", cutoff: str | None = None) -> dict:
    """Synthetic bars, predictions (every origin x horizon, universe-wide ranks), drift rows written through
    ``Warehouse.replace_slice`` and the default portfolio's backtest: the state a pure-serving test or the benchmark needs, without training a model."""
    rng = np.random.default_rng(seed)
    store = Warehouse(home)
    store.ensure_all_tables()
    days = trading_days(start, end)
    sessions = all_sessions()
    position = {d: i for i, d in enumerate(sessions)}
    closes = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (len(days), len(symbols))), axis=0))
    bars = pd.DataFrame({
        "symbol": np.repeat(symbols, len(days)), "date": np.tile(days, len(symbols)),
        "close": closes.T.ravel(),
    })
    bars = bars.assign(open=bars["close"], high=bars["close"] * 1.01, low=bars["close"] * 0.99,
                       adj_close=bars["close"], volume=1e5, source="sample")
    store.replace_slice(MARKET_BARS, bars, symbols, days[0], days[-1])
    parts = []
    for h in HORIZONS:
        p = bars[["symbol", "date", "close"]].copy()
        p["horizon"] = h
        p["target_date"] = [sessions[position[d] + h] for d in p["date"]]
        p["pred_return"] = rng.normal(0, 0.01 * np.sqrt(h), len(p))
        width = 0.02 * np.sqrt(h)
        for level, z in ((80, 1.0), (95, 1.6)):
            p[f"lower_{level}"] = p["pred_return"] - z * width
            p[f"upper_{level}"] = p["pred_return"] + z * width
        parts.append(p)
    preds = pd.concat(parts, ignore_index=True)
    preds["pred_price"] = preds["close"] * np.exp(preds["pred_return"])
    for level in (80, 95):
        preds[f"price_lower_{level}"] = preds["close"] * np.exp(preds[f"lower_{level}"])
        preds[f"price_upper_{level}"] = preds["close"] * np.exp(preds[f"upper_{level}"])
    preds["pred_drift"] = 0.0
    preds["rank"] = preds.groupby(["date", "horizon"])["pred_return"].rank(ascending=False, method="first").astype("int64")
    preds["member_used"] = "ensemble"
    preds["model_version"] = version
    preds["model_cutoff"] = pd.Timestamp(cutoff or sessions[position[days[0]] - 1]).date()
    preds["target_date"] = pd.to_datetime(preds["target_date"]).dt.date
    store.replace_slice(PREDICTIONS, preds, symbols, days[0], days[-1])
    last = days[-1]
    drift = pd.DataFrame([
        {"symbol": s, "date": last, "detector": det, "feature": feat, "statistic": 0.5, "p_value": 0.001 if det == "ks" else None,
         "threshold": 0.01, "breached": det == "ks" and i == 0, "skipped_reason": None, "n": 60, "model_version": version}
        for i, s in enumerate(symbols) for det, feat in (("ks", "logret_1"), ("perf_mase", None))
    ])
    store.replace_slice(DRIFT_SCORES, drift, symbols, last, last)
    # The default portfolio (topk), as its assets would store it.
    refresh_portfolio(store, "topk", Strategy.parse(DEFAULT_PORTFOLIOS["topk"], "topk"), CostModel())
    return {"store": store, "days": days, "bars": bars, "predictions": preds}
