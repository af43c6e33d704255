"""Next-session orders of a portfolio: targets from the newest origin's predictions, trades from the paper holdings,
and the IB BasketTrader CSV that carries them into TWS.

Targets are ``strategies.target_weights`` of the newest origin's ``predictions`` rows (the spec's horizon) given the
current weights; the current weights are the paper portfolio's newest rows in ``portfolio_weights`` when the
warehouse has that table and rows for the portfolio, else the portfolio starts from cash (the plan says which).
Shares are whole: the round-down (towards zero) of |weight| x capital / price, signed; a trade is target shares -
current shares at the latest close, which is also the order's limit reference price.

The basket follows IB's "Manually Create a Basket File" and "Basket Fields" pages of the TWS users' guide
(https://www.ibkrguides.com/traderworkstation/manually-create-a-basket-file.htm): one header row naming the fields,
then one row per order with the same fields; a limit order needs ``OrderType`` and ``LmtPrice``; ``BasketTag``
becomes the orders' Order Reference.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.portfolio.simulate import dollar_volume
from ibf_core.portfolio.spec import Strategy
from ibf_core.portfolio.stored import read_portfolio
from ibf_core.portfolio.strategies import target_weights

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.storage.interface import TableStore

WEIGHTS_TABLE = "portfolio_weights"  # the paper portfolio's weights (columns as simulate.WEIGHT_COLUMNS)
BASKET_COLUMNS = (
    "Action", "Quantity", "Symbol", "SecType", "Exchange", "Currency", "TimeInForce", "OrderType", "LmtPrice",
    "BasketTag",
)  # fmt: skip
BUY, SELL = "BUY", "SELL"


class OrdersError(ValueError):
    """The orders cannot be computed (one line naming what is missing)."""


@dataclass(frozen=True)
class Trade:
    """One order: ``side`` ``shares`` of ``symbol`` at the limit reference ``price`` (the latest close, USD)."""

    symbol: str
    side: str
    shares: int
    price: float
    current_shares: int
    target_shares: int
    current_weight: float
    target_weight: float

    @property
    def value(self) -> float:
        """USD value of the order at its reference price."""
        return self.shares * self.price


@dataclass(frozen=True)
class Holdings:
    """The weights the trades start from and where they came from."""

    weights: pd.Series  # symbol -> weight (fraction of capital); empty: all cash
    source: str  # one line, e.g. "paper portfolio weights of 2024-05-01" or "cash (no portfolio_weights table)"
    date: dt.date | None = None


@dataclass(frozen=True)
class OrderPlan:
    """What ``ibf orders`` shows: the targets of the newest origin and the trades that reach them."""

    portfolio: str
    spec: Strategy
    origin: dt.date
    session: dt.date  # the session the orders are for (the NYSE session after the origin)
    capital: float
    holdings: Holdings
    targets: pd.Series
    prices: pd.Series  # symbol -> latest close
    price_date: dt.date | None  # the newest bar's date (None: no bars)
    trades: list[Trade]

    @property
    def basket_tag(self) -> str:
        """The BasketTag of these orders (their Order Reference in TWS)."""
        return f"ibf-{self.portfolio}-{self.origin:%Y%m%d}"

    def totals(self) -> dict[str, float]:
        """USD bought, sold and their difference (cash used), at the reference prices."""
        bought = sum(t.value for t in self.trades if t.side == BUY)
        sold = sum(t.value for t in self.trades if t.side == SELL)
        return {"bought": bought, "sold": sold, "net": bought - sold}


def share_count(weight: float, capital: float, price: float) -> int:
    """Whole shares for ``weight`` of ``capital`` at ``price``: |weight| x capital / price rounded down, signed."""
    if not (math.isfinite(price) and price > 0):
        raise OrdersError(f"price {price!r} cannot size an order")
    exact = abs(weight) * capital / price
    shares = math.floor(exact + 1e-9)  # 1e-9: a product like 0.3 x 1000 / 3 lands on the whole share it means
    return int(math.copysign(shares, weight)) if shares else 0


def trade_list(targets: pd.Series, current: pd.Series, prices: pd.Series, capital: float) -> list[Trade]:
    """The trades from ``current`` to ``targets`` (weights by symbol) at ``prices``: sells first, then buys, by symbol.

    A symbol held or targeted without a price raises :class:`OrdersError` naming it.
    """
    if not (math.isfinite(capital) and capital > 0):
        raise OrdersError(f"capital must be a positive amount of USD (got {capital!r})")
    wanted, now = targets.astype(float), current.astype(float)
    symbols = sorted(set(wanted.index[wanted != 0]) | set(now.index[now != 0]))
    unpriced = [s for s in symbols if s not in prices.index or not (prices[s] > 0)]
    if unpriced:
        raise OrdersError(f"no close in market_bars for {', '.join(unpriced)}: cannot size their orders")
    trades = []
    for symbol in symbols:
        price = float(prices[symbol])
        w_now, w_target = float(now.get(symbol, 0.0)), float(wanted.get(symbol, 0.0))
        have, want = share_count(w_now, capital, price), share_count(w_target, capital, price)
        if want != have:
            side = BUY if want > have else SELL
            trades.append(Trade(symbol, side, abs(want - have), price, have, want, w_now, w_target))
    return sorted(trades, key=lambda t: (t.side != SELL, t.symbol))


def limit_text(price: float) -> str:
    """A limit price on IB's tick for US stocks: 0.01 at USD 1 and above, 0.0001 below."""
    return f"{price:.2f}" if price >= 1.0 else f"{price:.4f}"


def basket_csv(trades: Sequence[Trade], tag: str) -> str:
    """The trades as a TWS BasketTrader file: header row, then one DAY limit order per trade on SMART in USD."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(BASKET_COLUMNS)
    for t in trades:
        writer.writerow([t.side, t.shares, t.symbol, "STK", "SMART", "USD", "DAY", "LMT", limit_text(t.price), tag])
    return buffer.getvalue()


# ---- from the warehouse --------------------------------------------------------------------------------------
def _day(value: object) -> dt.date:
    return pd.Timestamp(value).date()


def newest_origin(store: TableStore, horizon: int) -> dt.date:
    """The newest origin with predictions for ``horizon``; :class:`OrdersError` when there are none."""
    found = store.query("SELECT horizon, max(date) AS newest FROM predictions GROUP BY horizon ORDER BY horizon")
    if found.empty:
        raise OrdersError("no predictions exist in the warehouse: run the daily job (or `ibf demo`) first")
    match = found[found["horizon"] == horizon]
    if match.empty:
        stored = ", ".join(str(int(h)) for h in found["horizon"])
        raise OrdersError(f"no predictions for horizon {horizon} in the warehouse (stored horizons: {stored})")
    return _day(match["newest"].iloc[0])


def latest_closes(store: TableStore) -> tuple[pd.Series, dt.date | None]:
    """Each symbol's newest close in ``market_bars`` and the newest bar date."""
    rows = store.query("SELECT symbol, max(date) AS date, arg_max(close, date) AS close FROM market_bars GROUP BY symbol")
    if rows.empty:
        return pd.Series(dtype=float), None
    return rows.set_index("symbol")["close"].astype(float), _day(rows["date"].max())


def current_holdings(store: TableStore, portfolio: str) -> Holdings:
    """The paper portfolio's newest weights in ``portfolio_weights`` (the portfolio assets); cash when it has none."""
    weights, _ = read_portfolio(store, portfolio)
    if weights.empty:
        return Holdings(pd.Series(dtype=float), f"cash (no {WEIGHTS_TABLE} rows for portfolio {portfolio!r})")
    newest = weights[weights["date"] == weights["date"].max()]
    date = _day(newest["date"].iloc[0])
    held = newest.groupby("symbol")["weight"].sum().astype(float)
    return Holdings(held[held != 0], f"paper portfolio weights of {date}", date)


def _decision_frame(store: TableStore, spec: Strategy, origin: dt.date) -> pd.DataFrame:
    """The origin's prediction rows with what the spec needs: liquidity (dollar volume up to the origin), sectors."""
    frame = store.query("SELECT * FROM predictions WHERE date = ? AND horizon = ?", [origin, spec.horizon])
    if spec.min_dollar_volume > 0:
        start = origin - dt.timedelta(days=60)  # covers the 20 sessions of the mean
        bars = store.query("SELECT symbol, date, close, volume FROM market_bars WHERE date BETWEEN ? AND ?",
                           [start, origin])
        volume = dollar_volume(bars) if len(bars) else pd.DataFrame()
        known = volume.ffill().iloc[-1] if len(volume) else pd.Series(dtype=float)
        frame["liquidity"] = frame["symbol"].map(known).astype(float)
    if spec.sector_neutral:
        sectors = store.query(
            "SELECT symbol, arg_max(sector, date) AS sector FROM fundamentals WHERE date <= ? GROUP BY symbol", [origin]
        )
        frame["sector"] = frame["symbol"].map(sectors.set_index("symbol")["sector"])
    return frame


def next_session(day: dt.date) -> dt.date:
    """The NYSE session after ``day``."""
    sessions = all_sessions()
    return sessions[int(sessions.searchsorted(pd.Timestamp(day), side="right"))].date()


def plan_orders(store: TableStore, portfolio: str, spec: Strategy, capital: float) -> OrderPlan:
    """The orders that move ``portfolio`` to the targets of the newest origin, for ``capital`` USD."""
    origin = newest_origin(store, spec.horizon)
    holdings = current_holdings(store, portfolio)
    targets = target_weights(_decision_frame(store, spec, origin), spec, holdings.weights)
    prices, price_date = latest_closes(store)
    trades = trade_list(targets, holdings.weights, prices, capital)
    return OrderPlan(
        portfolio=portfolio, spec=spec, origin=origin, session=next_session(origin), capital=capital,
        holdings=holdings, targets=targets, prices=prices, price_date=price_date, trades=trades,
    )  # fmt: skip
