"""The honest backtest of a strategy on stored predictions and daily bars.

Timing: predictions of origin d are known after d's close. Every ``rebalance``-th origin (counted over the origins
that have predictions for the spec's horizon) sets targets from its own rows and the portfolio's weights at d's
close; they trade at the close of the next NYSE session T (market-on-close). The weights dated T are held from T's
close to the next close; between trades they drift with prices. So on session t, with w the weights dated t - 1
and r_i = adj_close_i(t) / adj_close_i(last known) - 1:

* ``gross_return`` = sum_i w_i r_i; drifted weights d_i = w_i (1 + r_i) / (1 + gross_return);
* on a trade session the new weights are the targets (a name without a price on T is not traded: it keeps d_i),
  ``turnover`` = sum_i |w_new_i - d_i| and ``cost`` = the USD cost of those trades (``costs.trade_costs`` at T's
  close, on the NAV before the trade) / the NAV of t - 1;
* ``net_return`` = gross_return - cost, ``nav`` = the previous nav x (1 + net_return), from 1.0;
* ``exposure`` = sum_i |w_i| after the session.

A name without a price on a session is held at its last price (r_i = 0 that day; its next price catches up) and
the row says so. A target depends on nothing after its origin's close (the test scrambles everything later); the
cost of a trade is measured at the trade's own close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ibf_core.calendar import trading_days
from ibf_core.features.microstructure import WINDOW
from ibf_core.portfolio.costs import CostModel, spread_estimates, trade_costs
from ibf_core.portfolio.spec import Strategy
from ibf_core.portfolio.strategies import target_weights

WEIGHT_COLUMNS = ("portfolio", "date", "symbol", "weight", "origin", "target_weight", "reason")
RETURN_COLUMNS = ("portfolio", "date", "gross_return", "cost", "net_return", "turnover", "nav", "exposure")
EVENT_COLUMNS = ("portfolio", "date", "symbol", "event")
REBALANCE, HOLD, SOLD = "rebalance", "hold", "sold"
NO_PRICE_HELD, NO_PRICE_NOT_TRADED = "no price: held at last price", "no price: not traded"
NO_TARGET = "no target (no scored names): not rebalanced"
RUIN = "nav not positive: simulation stopped"


@dataclass(frozen=True)
class Simulation:
    """A backtest's tables (columns as planned for ``portfolio_weights`` / ``portfolio_returns``) and its events."""

    weights: pd.DataFrame
    returns: pd.DataFrame
    events: pd.DataFrame
    costs: pd.DataFrame  # date, commission, fees, spread, slippage (USD) per trade session
    pending: pd.Series  # targets of the newest rebalance origin whose trade session has no bars yet


def dollar_volume(bars: pd.DataFrame) -> pd.DataFrame:
    """Mean close x volume over each symbol's trailing 20 bars (at least 5), per date (rows) and symbol (columns)."""
    data = bars[["symbol", "date"]].assign(
        date=pd.to_datetime(bars["date"]).dt.normalize(),
        dv=pd.to_numeric(bars["close"], errors="coerce") * pd.to_numeric(bars["volume"], errors="coerce"),
    ).sort_values(["symbol", "date"])
    data["dv"] = data.groupby("symbol", sort=False)["dv"].transform(lambda s: s.rolling(WINDOW, min_periods=5).mean())
    return data.pivot(index="date", columns="symbol", values="dv")


def _wide(bars: pd.DataFrame, column: str, sessions: pd.DatetimeIndex, symbols: list[str]) -> np.ndarray:
    table = bars.pivot(index="date", columns="symbol", values=column)
    values = table.reindex(index=sessions, columns=symbols).to_numpy(dtype=float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _frame(
    rows: pd.DataFrame, liquidity: pd.DataFrame, sectors: pd.Series | None, origin: pd.Timestamp
) -> pd.DataFrame:
    """One origin's prediction rows with the liquidity known at its close (``liquidity``: forward-filled over the
    sessions) and the sector codes."""
    frame = rows.copy()
    at = int(liquidity.index.searchsorted(origin, side="right")) - 1
    known = liquidity.iloc[at] if at >= 0 else pd.Series(dtype=float)
    frame["liquidity"] = frame["symbol"].map(known).astype(float)
    if sectors is not None:
        frame["sector"] = frame["symbol"].map(sectors)
    return frame


@dataclass(frozen=True)
class Market:
    """What a backtest reads from the bars over its sessions: prices, spreads and liquidity per session and symbol.

    Built once (:meth:`of`), it serves every backtest on the same bars and sessions (``simulate(market=...)``)."""

    sessions: pd.DatetimeIndex
    symbols: list[str]
    adj: np.ndarray
    close: np.ndarray
    spread: np.ndarray
    liquidity: pd.DataFrame  # mean dollar volume, forward-filled over the sessions

    @classmethod
    def of(cls, bars: pd.DataFrame, sessions: pd.DatetimeIndex, symbols: list[str] | None = None) -> Market:
        """The market of ``bars`` (``market_bars``' rows) on ``sessions``, for ``symbols`` (default: the bars')."""
        bars = bars.assign(date=pd.to_datetime(bars["date"]).dt.normalize())
        sessions = pd.DatetimeIndex(sessions).normalize()
        symbols = sorted(set(bars["symbol"].astype(str))) if symbols is None else symbols
        spread = spread_estimates(bars).reindex(index=sessions, columns=symbols).fillna(0.0).to_numpy()
        volume = dollar_volume(bars)
        return cls(sessions, symbols, _wide(bars, "adj_close", sessions, symbols), _wide(bars, "close", sessions, symbols),
                   spread, volume.reindex(volume.index.union(sessions)).ffill())


def simulate(
    predictions: pd.DataFrame,
    bars: pd.DataFrame | None,
    spec: Strategy,
    costs: CostModel = CostModel(),
    portfolio: str = "portfolio",
    sectors: Mapping[str, object] | pd.Series | None = None,
    sessions: pd.DatetimeIndex | None = None,
    market: Market | None = None,
) -> Simulation:
    """Backtest ``spec`` on ``predictions`` (the ``predictions`` table's rows) and ``bars`` (``market_bars``' rows).

    ``sectors``: symbol -> sector code (for ``sector_neutral``); ``sessions``: the trading sessions (default: the
    NYSE sessions from the first origin to the newest bar); ``market``: the bars already read (``Market.of``),
    instead of ``bars`` and ``sessions``.
    """
    preds = predictions[predictions["horizon"] == spec.horizon]
    preds = preds.assign(date=pd.to_datetime(preds["date"]).dt.normalize())
    if preds.empty:
        raise ValueError(f"no predictions for horizon {spec.horizon}")
    origins = pd.DatetimeIndex(sorted(preds["date"].unique()))
    if market is None:
        bars = bars.assign(date=pd.to_datetime(bars["date"]).dt.normalize())
        if sessions is None:
            sessions = trading_days(origins[0].date(), bars["date"].max().date())
        symbols = sorted(set(bars["symbol"].astype(str)) | set(preds["symbol"].astype(str)))
        market = Market.of(bars, sessions, symbols)
    unknown = sorted(set(preds["symbol"].astype(str)) - set(market.symbols))
    if unknown:
        raise ValueError(f"predictions for symbols without bars: {', '.join(unknown[:5])}")
    sessions, symbols, liquidity = market.sessions, market.symbols, market.liquidity
    adj, close, spread = market.adj, market.close, market.spread
    sector_map = None if sectors is None else pd.Series(sectors, dtype=object)
    by_origin = dict(tuple(preds.groupby("date")))
    schedule = origins[:: int(spec.rebalance)]
    trades: dict[int, pd.Timestamp] = {}
    pending_origin = None
    for origin in schedule:
        at = int(sessions.searchsorted(origin, side="right"))
        if at < len(sessions):
            trades[at] = origin
        else:
            pending_origin = origin
    state = _Run(portfolio, symbols, costs)
    first = min(trades) if trades else len(sessions)
    for i, day in enumerate(sessions):
        target = None
        if i in trades:
            origin = trades[i]
            frame = _frame(by_origin[origin], liquidity, sector_map, origin)
            target = target_weights(frame, spec, state.current())
        if not state.step(day, adj[i], close[i], spread[i], target, trades.get(i), record=i >= first):
            break
    pending = pd.Series(dtype=float, name="weight")
    if pending_origin is not None and state.alive:
        frame = _frame(by_origin[pending_origin], liquidity, sector_map, pending_origin)
        pending = target_weights(frame, spec, state.current())
    return state.result(pending)


class _Run:
    """The state of one backtest: weights, last prices, NAV, and the rows written so far."""

    def __init__(self, portfolio: str, symbols: list[str], costs: CostModel):
        self.portfolio, self.symbols, self.model = portfolio, np.array(symbols, dtype=object), costs
        n = len(symbols)
        self.index = {s: j for j, s in enumerate(symbols)}
        self.weights, self.last = np.zeros(n), np.full(n, np.nan)
        self.target, self.origin = np.zeros(n), None
        self.nav, self.alive = 1.0, True
        self.weight_rows: list[pd.DataFrame] = []
        self.return_rows: list[tuple] = []
        self.events: list[tuple] = []
        self.cost_rows: list[dict] = []

    def current(self) -> pd.Series:
        """The weights now (the decision time: the close of the session before the trade), non-zero names."""
        held = np.flatnonzero(self.weights)
        return pd.Series(self.weights[held], index=self.symbols[held], dtype=float)

    def step(self, day: pd.Timestamp, adj: np.ndarray, close: np.ndarray, spread: np.ndarray,
             target: pd.Series | None, origin: pd.Timestamp | None, record: bool) -> bool:
        """Advance one session; False when the NAV is gone."""
        date = day.date()
        has = np.isfinite(adj)
        returns = np.zeros(len(adj))
        moved = has & np.isfinite(self.last)
        returns[moved] = adj[moved] / self.last[moved] - 1.0
        self.last[has] = adj[has]
        gross = float(self.weights @ returns)
        if 1.0 + gross <= 0:
            self.events.append((self.portfolio, date, None, RUIN))
            self.alive = False
            return False
        drift = self.weights * (1.0 + returns) / (1.0 + gross)
        held_missing = (self.weights != 0) & ~has
        new, cost, turnover = drift, 0.0, 0.0
        trading = target is not None and not target.empty
        if target is not None and target.empty:
            self.events.append((self.portfolio, date, None, NO_TARGET))
        if trading:
            wanted = np.zeros(len(adj))
            wanted[[self.index[s] for s in target.index]] = target.to_numpy()
            tradable = has & np.isfinite(close)
            new = np.where(tradable, wanted, drift)
            change = new - drift
            nav_before = self.nav * (1.0 + gross)
            price = np.where(tradable, close, 1.0)
            parts = trade_costs(change, self.model.capital * nav_before, price, spread, self.model)
            cost = parts["total"] / (self.model.capital * self.nav)
            turnover = float(np.abs(change).sum())
            self.target, self.origin = wanted, origin.date()
            self.cost_rows.append({"date": date, **{k: v for k, v in parts.items() if k != "total"}})
            stuck = ~tradable & ((wanted != 0) | (drift != 0))
            for j in np.flatnonzero(stuck):
                self.events.append((self.portfolio, date, self.symbols[j], NO_PRICE_NOT_TRADED))
            reasons = np.where(stuck, NO_PRICE_NOT_TRADED, np.where(new == 0, SOLD, REBALANCE))
            shown = (new != 0) | (drift != 0)
        else:
            for j in np.flatnonzero(held_missing):
                self.events.append((self.portfolio, date, self.symbols[j], NO_PRICE_HELD))
            reasons = np.where(held_missing, NO_PRICE_HELD, HOLD)
            shown = new != 0
        net = gross - cost
        self.nav *= 1.0 + net
        self.weights = np.where(np.abs(new) > 1e-15, new, 0.0)
        if record:
            exposure = float(np.abs(new).sum())
            self.return_rows.append((self.portfolio, date, gross, cost, net, turnover, self.nav, exposure))
            idx = np.flatnonzero(shown)
            if len(idx):
                self.weight_rows.append(pd.DataFrame({
                    "portfolio": self.portfolio, "date": date, "symbol": self.symbols[idx], "weight": new[idx],
                    "origin": self.origin, "target_weight": self.target[idx], "reason": reasons[idx],
                }))
        return True

    def result(self, pending: pd.Series) -> Simulation:
        weights = (pd.concat(self.weight_rows, ignore_index=True) if self.weight_rows
                   else pd.DataFrame(columns=list(WEIGHT_COLUMNS)))
        return Simulation(
            weights=weights[list(WEIGHT_COLUMNS)],
            returns=pd.DataFrame(self.return_rows, columns=list(RETURN_COLUMNS)),
            events=pd.DataFrame(self.events, columns=list(EVENT_COLUMNS)),
            costs=pd.DataFrame(self.cost_rows, columns=["date", "commission", "fees", "spread", "slippage"]),
            pending=pending,
        )

