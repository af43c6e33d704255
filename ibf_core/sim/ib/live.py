"""The live side of the IB Gateway simulator: 5-second real-time bars (``reqRealTimeBars``) and top-of-book quotes
(``reqMktData``), streamed from :mod:`ibf_core.sim.intraday` sessions consistent with the stored daily bars, at real or
accelerated speed, with IB's limits and faults.

Wire facts (ib_insync 0.9.86 client/decoder): ``reqRealTimeBars`` is ``50, 3, reqId, <contract 12>, barSize,
whatToShow, useRTH, options``; a bar is ``50, 3, reqId, time, open, high, low, close, volume, wap, count``
(``time`` = epoch seconds of the bar start); cancel ``51, 1, reqId``. ``reqMktData`` is ``1, 11, reqId,
<contract 12>, deltaNeutral(0), genericTicks, snapshot, regulatorySnapshot, options``; prices arrive as
``1, 6, reqId, tickType, price, size, attrMask`` (bid 1, ask 2, last 4; delayed 66, 67, 68) and sizes as
``2, 6, reqId, tickType, size`` (bid 0, ask 3, last 5, volume 8; delayed 69, 70, 71, 74); cancel ``2, 2, reqId``.
``reqMarketDataType`` is ``59, 1, type`` (1 live, 3 delayed); the gateway answers ``58, 1, reqId, type`` per line.
``reqTickByTickData`` is ``97, reqId, <contract>, tickType, numberOfTicks, ignoreSize`` (cancel ``98, reqId``);
trades arrive as ``99, reqId, tickType, time, price, size, attrMask, exchange, conditions``. ``reqMktDepth`` is
``10, 5, reqId, <contract>, numRows, isSmartDepth, options`` (cancel ``11, 1, reqId, isSmartDepth``); levels arrive as ``12``
(L1) / ``13`` (L2: with market maker) ``..., position, operation, side, price, size``. (Field lists as ib_insync
0.9.86 writes and reads them; the handlers' docstrings give the details.)

Limits and faults (``Faults``): market-data lines (``max_market_data_lines``: more gives error 101), symbols
without a live subscription (``no_market_data``: error 10089 unless the client asked for delayed data, then
delayed ticks), pacing of real-time bars (more than ``realtime_bar_requests_per_10min`` requests in 10 minutes:
error 420), a stream dropped after N bars (``drop_stream_after_bars``: the socket closes), and 1100/1102 in the
middle of a stream (``stream_connectivity_loss_after_bars``; bars of the lost stretch are not resent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections import deque
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.sim.ib.protocol import MSG_LOST, symbol_for_con_id, wire_number
from ibf_core.sim.intraday import (
    BAR_SECONDS,
    DailyBar,
    depth_levels,
    five_second_bars,
    quotes,
    session_open,
    session_trades,
)

# A connection of the gateway (``gateway._Session``): typed loosely so this module imports nothing of the gateway.
_Session = Any

MSG_MAX_TICKERS = "Max number of tickers has been reached"
MSG_NO_SUBSCRIPTION = (
    "Requested market data is not subscribed. Displaying delayed market data. "
    "Requested market data requires additional subscription for API. See link in 'Market Data Connections' dialog"
)
MSG_REALTIME_PACING = "Invalid Real-time Query: Historical data request pacing violation"
MSG_MAX_TICK_BY_TICK = "Max number of tick-by-tick requests has been reached."
MSG_MAX_DEPTH = "Max number of market depth requests has been reached"
TICK_BY_TICK_TYPES = {"Last": 1, "AllLast": 2}  # trades; BidAsk (3) and MidPoint (4) are not simulated
MAX_REPLAYED_TICKS = 1000  # numberOfTicks > 0: at most this many recent ticks come first (IB's cap)
PACING_WINDOW_S = 600.0
LIVE, DELAYED = 1, 3
# (live, delayed) tick types
BID, ASK, LAST = (1, 66), (2, 67), (4, 68)
BID_SIZE, ASK_SIZE, LAST_SIZE, VOLUME = (0, 69), (3, 70), (5, 71), (8, 74)


@dataclasses.dataclass(frozen=True)
class LiveClock:
    """The simulated market time: ``start`` (tz-aware) at the first call, advancing ``speed`` times real time."""

    start: dt.datetime
    speed: float = 1.0
    _origin: list[float] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def now(self) -> pd.Timestamp:
        if not self._origin:
            self._origin.append(time.monotonic())
        elapsed = (time.monotonic() - self._origin[0]) * self.speed
        return pd.Timestamp(self.start).tz_convert("UTC") + pd.Timedelta(seconds=elapsed)

    def sleep_s(self, market_seconds: float) -> float:
        return market_seconds / self.speed


@dataclasses.dataclass
class LiveState:
    """Per connection: the market data type asked for, open lines, real-time-bar request times."""

    data_type: int = LIVE
    lines: set[int] = dataclasses.field(default_factory=set)
    tick_by_tick: set[int] = dataclasses.field(default_factory=set)
    depth: set[int] = dataclasses.field(default_factory=set)
    realtime_requests: deque = dataclasses.field(default_factory=deque)
    bars_sent: int = 0


async def day_for(session: _Session, symbol: str, when: pd.Timestamp) -> DailyBar | None:
    """The stored daily bar of ``symbol`` on the New York date of ``when`` (None: unknown symbol or no session)."""
    frame = await session.sim.bars_for(symbol)
    if frame is None:
        return None
    date = when.tz_convert("America/New_York").date()
    row = frame[pd.to_datetime(frame["date"]).dt.date == date]
    if row.empty:
        return None
    r = row.iloc[0]
    return DailyBar(symbol, date, float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"]), float(r["volume"]))


def _state(session: _Session) -> LiveState:
    if not hasattr(session, "live"):
        session.live = LiveState()
    return session.live


def _symbol(contract: list[str]) -> str:
    return contract[1].strip().upper() or symbol_for_con_id(contract[0])


# ----- handlers ---------------------------------------------------------------------------------------
def on_market_data_type(session: _Session, fields: list[str]) -> None:
    _state(session).data_type = int(fields[2])


def on_realtime_bars(session: _Session, fields: list[str]) -> None:
    req_id = int(fields[2])
    symbol = _symbol(fields[3:15])
    what = fields[16] if len(fields) > 16 else "TRADES"
    state = _state(session)
    limit = session.sim.faults.realtime_bar_requests_per_10min
    now = time.monotonic()
    while state.realtime_requests and now - state.realtime_requests[0] > PACING_WINDOW_S:
        state.realtime_requests.popleft()
    if len(state.realtime_requests) >= limit:
        session.error(req_id, 420, MSG_REALTIME_PACING)
        return
    state.realtime_requests.append(now)
    session.sim._record_live(("realtime_bars", symbol, what, session.client_id))
    session.spawn(req_id, stream_bars(session, req_id, symbol, what))


def on_cancel(session: _Session, fields: list[str], at: int = 2) -> None:
    req_id = int(fields[at])
    state = _state(session)
    for held in (state.lines, state.tick_by_tick, state.depth):
        held.discard(req_id)
    task = session.pending.pop(req_id, None)
    if task is not None:
        task.cancel()


def on_tick_by_tick(session: _Session, fields: list[str]) -> None:
    """``97, reqId, <contract 12>, tickType, numberOfTicks, ignoreSize`` (no version field)."""
    req_id = int(fields[1])
    symbol = _symbol(fields[2:14])
    tick_type, replay = fields[14], int(fields[15] or 0)
    state = _state(session)
    if tick_type not in TICK_BY_TICK_TYPES:
        session.error(req_id, 10189, f"Failed to request tick-by-tick data: the simulator serves Last/AllLast, not {tick_type}")
        return
    if len(state.tick_by_tick) >= session.sim.faults.max_tick_by_tick:
        session.error(req_id, 10190, MSG_MAX_TICK_BY_TICK)
        return
    state.tick_by_tick.add(req_id)
    session.sim._record_live(("tick_by_tick", symbol, tick_type, session.client_id))
    session.spawn(req_id, stream_trades(session, req_id, symbol, TICK_BY_TICK_TYPES[tick_type], replay))


def on_market_depth(session: _Session, fields: list[str]) -> None:
    """``10, 5, reqId, <contract 12>, numRows, isSmartDepth, options``."""
    req_id = int(fields[2])
    symbol = _symbol(fields[3:15])
    rows, smart = int(fields[15]), fields[16] == "1"
    state = _state(session)
    if len(state.depth) >= session.sim.faults.max_depth_requests:
        session.error(req_id, 309, MSG_MAX_DEPTH)
        return
    state.depth.add(req_id)
    session.sim._record_live(("market_depth", symbol, "SMART" if smart else "L1", session.client_id))
    session.spawn(req_id, stream_depth(session, req_id, symbol, max(1, rows), smart))


def on_market_data(session: _Session, fields: list[str]) -> None:
    req_id = int(fields[2])
    symbol = _symbol(fields[3:15])
    state = _state(session)
    faults = session.sim.faults
    if len(state.lines) >= faults.max_market_data_lines:
        session.error(req_id, 101, MSG_MAX_TICKERS)
        return
    data_type = LIVE  # a subscribed symbol is live whatever type was asked for (as in TWS)
    if symbol in faults.no_market_data:
        if state.data_type == LIVE:
            session.error(req_id, 10089, f"{MSG_NO_SUBSCRIPTION} {symbol} NASDAQ.NMS/TOP/ALL")
            return
        data_type = DELAYED
    rt_volume = "233" in (fields[16] if len(fields) > 16 else "").split(",")
    state.lines.add(req_id)
    session.sim._record_live(("market_data", symbol, "DELAYED" if data_type != LIVE else "LIVE", session.client_id))
    session.send(58, 1, req_id, data_type)
    session.spawn(req_id, stream_quotes(session, req_id, symbol, data_type, rt_volume))


# ----- streams ----------------------------------------------------------------------------------------
async def _session_rows(session: _Session, symbol: str, what: str):
    """(bars, quotes) of the market day the live clock is in, or None outside a stored session."""
    day = await day_for(session, symbol, session.sim.live_clock.now())
    if day is None:
        return None
    trades = five_second_bars(day)
    book = quotes(day, trades)
    if what not in ("MIDPOINT", "BID", "ASK", "BID_ASK"):
        return trades, book
    return quote_bars(trades, book, what), book


def quote_bars(trades: pd.DataFrame, book: pd.DataFrame, what: str) -> pd.DataFrame:
    """MIDPOINT, BID, ASK or BID_ASK 5-second bars of a session's quotes (volume, wap and count -1, as IB sends them).

    In a bar the quote standing at its start (the previous bar's) holds for 4 seconds, then the bar's own quote
    (at start + 4 s) for 1 second. MIDPOINT, BID, ASK: open/close that price at the bar's start/end, high/low their
    max/min. BID_ASK (IB's meaning for BID_ASK bars): open = time-average bid, high = max ask, low = min bid,
    close = time-average ask.
    """
    held = (BAR_SECONDS - 1) / BAR_SECONDS  # share of the bar the previous quote stands
    prev = book.shift(1).fillna(book)
    if what != "BID_ASK":
        side = {"MIDPOINT": lambda q: (q["bid"] + q["ask"]) / 2, "BID": lambda q: q["bid"], "ASK": lambda q: q["ask"]}[what]
        start, end = side(prev), side(book)
        ohlc = {"open": start, "high": np.maximum(start, end), "low": np.minimum(start, end), "close": end}
    else:
        ohlc = {"open": held * prev["bid"] + (1 - held) * book["bid"], "high": np.maximum(prev["ask"], book["ask"]),
                "low": np.minimum(prev["bid"], book["bid"]), "close": held * prev["ask"] + (1 - held) * book["ask"]}
    return trades.assign(**{k: v.to_numpy() for k, v in ohlc.items()}, volume=-1.0, wap=-1.0, count=-1)


async def _wait_until(session: _Session, when: pd.Timestamp) -> None:
    clock = session.sim.live_clock
    delay = (when - clock.now()).total_seconds()
    if delay > 0:
        await asyncio.sleep(clock.sleep_s(delay))


async def _interruptions(session: _Session) -> None:
    """The stream faults that trigger on the number of bars this connection has sent."""
    state, faults = _state(session), session.sim.faults
    state.bars_sent += 1
    if faults.drop_stream_after_bars is not None and state.bars_sent >= faults.drop_stream_after_bars:
        session.sim.set_faults(drop_stream_after_bars=None)
        session.close()
        raise asyncio.CancelledError
    if faults.stream_connectivity_loss_after_bars is not None and state.bars_sent >= faults.stream_connectivity_loss_after_bars:
        session.sim.set_faults(stream_connectivity_loss_after_bars=None)
        session.connected_to_ib.clear()
        session.error(-1, 1100, MSG_LOST)
        if faults.restore_after is not None:
            session.restorer = asyncio.ensure_future(session.restore_later(faults.restore_after))


async def stream_bars(session: _Session, req_id: int, symbol: str, what: str) -> None:
    """Each 5-second bar once the live clock passes its end (bars of a connectivity gap are dropped)."""
    rows = await _session_rows(session, symbol, what)
    if rows is None:
        return  # no session today: real IB sends nothing either
    bars, _ = rows
    clock = session.sim.live_clock
    now = clock.now()
    ends = bars["time"] + pd.Timedelta(seconds=BAR_SECONDS)
    for i in range(int((ends <= now).sum()), len(bars)):
        await _wait_until(session, ends.iloc[i])
        if not session.connected_to_ib.is_set():
            continue
        bar = bars.iloc[i]
        session.send(50, 3, req_id, int(bar["time"].timestamp()), wire_number(bar["open"]), wire_number(bar["high"]),
                     wire_number(bar["low"]), wire_number(bar["close"]), wire_number(bar["volume"]), wire_number(bar["wap"]), int(bar["count"]))
        await _interruptions(session)


async def stream_quotes(session: _Session, req_id: int, symbol: str, data_type: int, rt_volume: bool = False) -> None:
    """Bid/ask/last prices and sizes at each quote time, and the day's cumulative volume (in lots of 100); with
    generic tick 233, the RTVolume string (``price;size;ms since epoch;volume;vwap;single``) carrying the
    trade's market time."""
    rows = await _session_rows(session, symbol, "TRADES")
    if rows is None:
        return
    bars, book = rows
    k = 0 if data_type == LIVE else 1
    clock = session.sim.live_clock
    # Delayed data is the book of 15 minutes ago.
    shift = pd.Timedelta(0) if data_type == LIVE else pd.Timedelta(minutes=15)
    times = book["time"] + shift
    volume = bars["volume"].cumsum()
    for i in range(int((times <= clock.now()).sum()), len(book)):
        await _wait_until(session, times.iloc[i])
        if not session.connected_to_ib.is_set():
            continue
        q = book.iloc[i]
        if rt_volume:  # first: the quote's market time reaches the client with its prices
            ms = int((times.iloc[i] - shift).timestamp() * 1000)
            session.send(46, 6, req_id, 48, f"{wire_number(q['last'])};{wire_number(q['last_size'])};{ms};{wire_number(volume.iloc[i])};{wire_number(q['last'])};true")
        session.send(1, 6, req_id, BID[k], wire_number(q["bid"]), wire_number(q["bid_size"]), 0)
        session.send(1, 6, req_id, ASK[k], wire_number(q["ask"]), wire_number(q["ask_size"]), 0)
        session.send(1, 6, req_id, LAST[k], wire_number(q["last"]), wire_number(q["last_size"]), 0)
        session.send(2, 6, req_id, VOLUME[k], wire_number(volume.iloc[i] / 100))



async def stream_trades(session: _Session, req_id: int, symbol: str, tick_type: int, replay: int) -> None:
    """Each trade of the session once the live clock passes it (``99, reqId, tickType, time, price, size, mask,
    exchange, specialConditions``; time in whole epoch seconds, as IB sends it). With ``numberOfTicks`` > 0 the
    most recent trades (at most 1000) come first, as IB documents for that argument; trades of a connectivity gap
    are not sent."""
    day = await day_for(session, symbol, session.sim.live_clock.now())
    if day is None:
        return
    trades = session_trades(day)
    clock = session.sim.live_clock
    ns = trades["time"].astype("int64").to_numpy()
    epoch, price, size, exchange = ns // 10**9, trades["price"].to_numpy(), trades["size"].to_numpy(), trades["exchange"].to_numpy()
    i = int(np.searchsorted(ns, clock.now().value, side="right"))
    start = max(0, i - min(replay, MAX_REPLAYED_TICKS))
    while start < len(ns):
        if start >= i:
            await _wait_until(session, pd.Timestamp(int(ns[start]), tz="UTC"))
            i = int(np.searchsorted(ns, clock.now().value, side="right"))
        if session.connected_to_ib.is_set():
            for k in range(start, i):
                session.send(99, req_id, tick_type, int(epoch[k]), wire_number(price[k]), wire_number(size[k]), 0, exchange[k], "")
        start = i  # caught up: wait for the next trade (never skip one)


async def stream_depth(session: _Session, req_id: int, symbol: str, rows: int, smart: bool) -> None:
    """The book around the quote model's bid/ask: every level inserted at once (operation 0), then at each quote
    the levels whose price or size changed (operation 1). ``12, 1, reqId, position, operation, side, price, size``
    (L1), or with smart depth ``13, 1, reqId, position, marketMaker, operation, side, price, size, isSmartDepth``
    (the market maker field carrying the exchange); side 0 = ask, 1 = bid, as ib_insync reads it."""
    rows_ = await _session_rows(session, symbol, "TRADES")
    if rows_ is None:
        return
    _, book = rows_
    day = await day_for(session, symbol, session.sim.live_clock.now())
    levels = depth_levels(day, book, rows)
    clock = session.sim.live_clock
    times = book["time"]

    def send(position: int, operation: int, side: int, price: float, size: float) -> None:
        if smart:
            session.send(13, 1, req_id, position, "NSDQ" if side else "ARCA", operation, side, wire_number(price), wire_number(size), 1)
        else:
            session.send(12, 1, req_id, position, operation, side, wire_number(price), wire_number(size))

    def sides(q: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return [(0, levels["ask_price"][q], levels["ask_size"][q]), (1, levels["bid_price"][q], levels["bid_size"][q])]

    q = max(0, int((times <= clock.now()).sum()) - 1)
    for side, prices, sizes in sides(q):
        for position in range(rows):
            send(position, 0, side, prices[position], sizes[position])
    for nxt in range(q + 1, len(book)):
        await _wait_until(session, times.iloc[nxt])
        if not session.connected_to_ib.is_set():
            continue
        for (side, prices, sizes), (_, old_p, old_s) in zip(sides(nxt), sides(q)):
            for position in np.flatnonzero((prices != old_p) | (sizes != old_s)):
                send(int(position), 1, side, prices[position], sizes[position])
        q = nxt


async def nightly_reset(sim: Any, seconds: float) -> None:
    """IB's daily restart: stop listening (connects are refused), drop every connection, listen again on the same
    port after ``seconds`` of market time."""
    clock = sim.live_clock
    start = clock.now()
    sim.resets.append((start, start + pd.Timedelta(seconds=seconds)))
    if sim._server is not None:
        sim._server.close()
    for session in list(sim._sessions):
        session.close()
    await asyncio.sleep(clock.sleep_s(seconds))
    sim._server = await asyncio.start_server(sim._on_client, sim.host, sim.port)


def session_start(date: dt.date) -> dt.datetime:
    """09:30 New York on ``date`` (a convenient live clock start)."""
    return session_open(date).to_pydatetime()


HANDLERS: dict[str, Any] = {
    "1": on_market_data,
    "2": on_cancel,
    "10": on_market_depth,
    "11": on_cancel,
    "97": on_tick_by_tick,
    "98": lambda session, fields: on_cancel(session, fields, at=1),
    "50": on_realtime_bars,
    "51": on_cancel,
    "59": on_market_data_type,
}
