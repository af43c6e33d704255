"""A generated panel with a planted cross-sectional signal, for the portfolio backtests.

On every session t each symbol's return is ``planted[t, i] + noise`` where ``planted`` is +signal for a random half
of the symbols and -signal for the other half. The predictions of origin t (known after t's close) are
``planted[t + lead] + pred_noise``; with ``lead=2`` that is the session a portfolio trading at t + 1's close
actually holds, so a top-k portfolio whose k is at most the winners' count earns +signal a session, plus the mean
noise of its k names. (``lead=1`` forecasts the trade session itself, which an honest backtest cannot earn.)
"""

import numpy as np
import pandas as pd

from ibf_core.calendar import trading_days


def planted_panel(
    n_symbols: int = 30,
    start: str = "2021-01-04",
    end: str = "2021-12-31",
    signal: float = 0.005,
    noise: float = 0.01,
    pred_noise: float = 0.0005,
    spread: float | None = 0.001,
    seed: int = 0,
    horizon: int = 1,
    lead: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(bars, predictions, planted) on real NYSE sessions; ``spread=None`` leaves the quoted spread unknown."""
    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    n = len(days)
    symbols = [f"S{i:03d}" for i in range(n_symbols)]
    planted = np.where(rng.random((n, n_symbols)) < 0.5, signal, -signal)
    returns = planted + rng.normal(0.0, noise, (n, n_symbols))
    returns[0] = 0.0
    close = (20.0 + 80.0 * rng.random(n_symbols)) * np.cumprod(1.0 + returns, axis=0)
    width = np.abs(rng.normal(0.0, 0.004, (n, n_symbols))) + 0.002
    bars = pd.DataFrame({
        "symbol": np.tile(symbols, n),
        "date": np.repeat(days, n_symbols),
        "open": (close * (1.0 + rng.normal(0.0, 0.002, (n, n_symbols)))).ravel(),
        "close": close.ravel(),
        "adj_close": close.ravel(),
        "volume": rng.integers(50_000, 500_000, (n, n_symbols)).astype(float).ravel(),
    })
    bars["high"] = np.maximum(bars["open"], bars["close"]) * (1.0 + width.ravel())
    bars["low"] = np.minimum(bars["open"], bars["close"]) * (1.0 - width.ravel())
    bars["spread"] = spread if spread is not None else np.nan
    pred = planted[lead:] + rng.normal(0.0, pred_noise, (n - lead, n_symbols))
    predictions = pd.DataFrame({
        "symbol": np.tile(symbols, n - lead),
        "date": np.repeat(days[: n - lead], n_symbols),
        "horizon": horizon,
        "pred_return": pred.ravel(),
    })
    predictions["rank_score"] = predictions["pred_return"]
    return bars, predictions, planted


# ---- a small warehouse for the orders of the next session ----------------------------------------------------------
ORDER_PRICES = {"AAA": 50.0, "BBB": 20.0, "CCC": 125.0, "DDD": 7.5, "EEE": 300.0, "FFF": 0.8}
ORDER_SCORES = {"EEE": 0.9, "AAA": 0.5, "CCC": 0.2, "DDD": -0.1, "FFF": -0.3, "BBB": -0.8}  # the newest origin's
ORDER_ORIGIN = "2024-05-01"


def order_bars(end: str = ORDER_ORIGIN, sessions: int = 30) -> pd.DataFrame:
    """Daily bars of the ORDER_PRICES symbols over the ``sessions`` NYSE sessions up to ``end``: a constant close."""
    days = trading_days(pd.Timestamp(end) - pd.Timedelta(days=2 * sessions), end)[-sessions:]
    rows = []
    for symbol, price in ORDER_PRICES.items():
        for day in days:
            rows.append({"symbol": symbol, "date": day, "open": price, "high": price * 1.01, "low": price * 0.99,
                         "close": price, "adj_close": price, "volume": 100_000.0, "source": "csv"})
    return pd.DataFrame(rows)


def store_order_world(store, origins: tuple[str, ...] = ("2024-04-30", ORDER_ORIGIN)) -> None:
    """market_bars (order_bars) and horizon-1 predictions of ``origins``: the newest ranks by ORDER_SCORES, the
    older ones reversed (so a test sees which origin was used); other columns hold placeholders."""
    from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS

    bars = order_bars(origins[-1])
    store.replace_slice(MARKET_BARS, bars, sorted(ORDER_PRICES), bars["date"].min(), bars["date"].max())
    placeholders = {"string": "v1", "date32[day]": pd.Timestamp(origins[-1]), "int64": 0, "double": 0.0}
    rows = []
    for origin in origins:
        sign = 1.0 if origin == origins[-1] else -1.0
        for rank, (symbol, score) in enumerate(sorted(ORDER_SCORES.items(), key=lambda kv: -sign * kv[1]), start=1):
            row = {c.name: placeholders[str(c.type)] for c in PREDICTIONS.columns if not c.optional}
            rows.append({**row, "symbol": symbol, "date": pd.Timestamp(origin), "horizon": 1, "rank": rank,
                         "close": ORDER_PRICES[symbol], "pred_return": sign * score, "rank_score": sign * score})
    frame = pd.DataFrame(rows)
    store.replace_slice(PREDICTIONS, frame, sorted(ORDER_PRICES), min(origins), max(origins))
