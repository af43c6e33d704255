"""The live collector behind ``ibf stream``: subscribes the universe to IB 5-second real-time bars and top-of-book
quotes through ``ib_insync``, and appends micro-batches to ``intraday_bars`` and ``quotes``.

IB's limits: market-data lines (``IBF_IB_MAX_LINES``): symbols are served in the order given (the watch list
first) and the rest are named as unserved; real-time-bar requests are paced to 60 per 10 minutes; a symbol
without a live subscription (10089/354) is re-requested as delayed data (``reqMarketDataType(3)``) and its rows
say ``delayed``. A dropped connection is reconnected with back-off and every line re-subscribed; 1101
(connectivity restored, data lost) re-subscribes too. Rows are keyed (bar time / quote time), so whatever a
reconnect or a restart sends twice is stored once; a ``kill -9`` loses at most the batch in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ibf_core.storage.interface import TableStore
from ibf_core.streaming.store import append_rows
from ibf_core.streaming.tables import INTRADAY_BARS, QUOTES

log = logging.getLogger(__name__)
NEW_YORK = "America/New_York"
NO_SUBSCRIPTION = (10089, 354, 10167)
REALTIME_PER_10MIN = 60


@dataclass
class StreamStats:
    """What a collector did (printed by ``ibf stream``, asserted by the tests)."""

    bars: int = 0
    quotes: int = 0
    batches: int = 0
    connects: int = 0
    unserved: list[str] = field(default_factory=list)
    delayed: set[str] = field(default_factory=set)
    # receipt -> queryable (committed); on a live feed add IB's own delivery delay (bar end -> receipt, ~1 s)
    lags_s: list[float] = field(default_factory=list)


class _Pacer:
    """At most ``limit`` requests in any ``window_s``: ``wait()`` sleeps until the next one may go."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s, self.sent = limit, window_s, deque()

    async def wait(self) -> None:
        while len(self.sent) >= self.limit:
            await asyncio.sleep(max(0.0, self.window_s - (time.monotonic() - self.sent[0])) + 0.01)
            while self.sent and time.monotonic() - self.sent[0] > self.window_s:
                self.sent.popleft()
        self.sent.append(time.monotonic())


class Collector:
    def __init__(
        self,
        store: TableStore,
        symbols: list[str],
        *,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        client_id: int = 1,
        max_lines: int = 100,
        bar_types: tuple[str, ...] = ("TRADES",),
        flush_s: float = 1.0,
        connect_timeout: float = 5.0,
        realtime_per_10min: int = REALTIME_PER_10MIN,
    ):
        self.store, self.host, self.ports, self.client_id = store, host, ports or [4002], client_id
        self.symbols = list(dict.fromkeys(symbols))
        self.served, unserved = self.symbols[:max_lines], self.symbols[max_lines:]
        self.bar_types, self.flush_s, self.connect_timeout = bar_types, flush_s, connect_timeout
        self.stats = StreamStats(unserved=unserved)
        self._bars: list[dict[str, Any]] = []
        self._quotes: list[dict[str, Any]] = []
        self._pacer = _Pacer(realtime_per_10min, 600.0)
        self._ib: Any = None
        self._lost = asyncio.Event()
        if unserved:
            log.warning("no market-data line for %d symbol(s) (IBF_IB_MAX_LINES=%d): %s", len(unserved), max_lines, ", ".join(unserved))

    # ----- rows -----------------------------------------------------------------------------------
    def _on_bar(self, symbol: str, what: str, bars: Any, has_new: bool) -> None:
        if not has_new or not bars:
            return
        bar = bars[-1]
        when = pd.Timestamp(bar.time).tz_convert("UTC")
        self._bars.append({
            "symbol": symbol, "date": when.tz_convert(NEW_YORK).normalize().tz_localize(None), "time": when, "what": what,
            "open": bar.open_, "high": bar.high, "low": bar.low, "close": bar.close, "volume": float(bar.volume),
            "wap": float(bar.wap), "count": int(bar.count), "received_at": pd.Timestamp.now(tz="UTC"),
        })

    def _on_ticker(self, symbol: str, ticker: Any) -> None:
        import math

        when = pd.Timestamp(ticker.rtTime or ticker.time or dt.datetime.now(dt.timezone.utc)).tz_convert("UTC")

        def num(value: Any) -> float | None:
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

        self._quotes.append({
            "symbol": symbol, "date": when.tz_convert(NEW_YORK).normalize().tz_localize(None), "time": when,
            "bid": num(ticker.bid), "ask": num(ticker.ask), "bid_size": num(ticker.bidSize), "ask_size": num(ticker.askSize),
            "last": num(ticker.last), "last_size": num(ticker.lastSize), "volume": num(ticker.volume),
            "delayed": symbol in self.stats.delayed, "received_at": pd.Timestamp.now(tz="UTC"),
        })

    def flush(self) -> int:
        """Append what arrived since the last flush (one write per table); returns the rows stored."""
        bars, self._bars = self._bars, []
        book, self._quotes = self._quotes, []
        stored = 0
        if bars:
            frame = pd.DataFrame(bars)
            added = append_rows(self.store, INTRADAY_BARS, frame)
            done = pd.Timestamp.now(tz="UTC")
            self.stats.lags_s += (done - frame["received_at"]).dt.total_seconds().tolist()
            self.stats.bars += added
            stored += added
        if book:
            added = append_rows(self.store, QUOTES, pd.DataFrame(book))
            self.stats.quotes += added
            stored += added
        if bars or book:
            self.stats.batches += 1
        return stored

    # ----- connection -----------------------------------------------------------------------------
    async def _connect(self) -> Any:
        from ibf_core.sources.ibkr import ib_client

        lib = ib_client()
        last: BaseException | None = None
        for port in self.ports:
            ib = lib.IB()
            try:
                await ib.connectAsync(self.host, port, clientId=self.client_id, timeout=self.connect_timeout, readonly=True)
                return ib
            except (OSError, asyncio.TimeoutError) as exc:
                last = exc
                ib.disconnect()
        raise ConnectionError(f"IB Gateway not reachable at {self.host}:{','.join(map(str, self.ports))} ({last})")

    async def _subscribe(self, ib: Any) -> None:
        from ibf_core.sources.ibkr import ib_client

        lib = ib_client()

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            if code in NO_SUBSCRIPTION and contract is not None and contract.symbol not in self.stats.delayed:
                self.stats.delayed.add(contract.symbol)
                log.warning("%s: no live market-data subscription (%d); using delayed data", contract.symbol, code)
                asyncio.get_event_loop().call_soon(self._request_delayed, ib, contract.symbol)
            elif code == 1101:  # restored, data lost: every line again
                self._lost.set()

        ib.errorEvent += on_error
        ib.disconnectedEvent += lambda: self._lost.set()
        for symbol in self.served:
            contract = lib.Stock(symbol, "SMART", "USD")
            self._request_quotes(ib, symbol, contract)
        for symbol in self.served:
            for what in self.bar_types:
                await self._pacer.wait()
                bars = ib.reqRealTimeBars(lib.Stock(symbol, "SMART", "USD"), 5, what, False)
                bars.updateEvent += lambda b, new, s=symbol, w=what: self._on_bar(s, w, b, new)

    def _request_quotes(self, ib: Any, symbol: str, contract: Any) -> None:
        ticker = ib.reqMktData(contract, "233", False, False)
        ticker.updateEvent += lambda t, s=symbol: self._on_ticker(s, t)

    def _request_delayed(self, ib: Any, symbol: str) -> None:
        from ibf_core.sources.ibkr import ib_client

        ib.reqMarketDataType(3)
        self._request_quotes(ib, symbol, ib_client().Stock(symbol, "SMART", "USD"))

    async def run(self, duration_s: float | None = None, stop: asyncio.Event | None = None) -> StreamStats:
        """Collect until ``duration_s`` passes or ``stop`` is set; reconnects meanwhile. Flushes at the end."""
        stop = stop or asyncio.Event()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        backoff = 0.2
        flusher = asyncio.ensure_future(self._flush_loop(stop))
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    self._ib = await self._connect()
                except ConnectionError as exc:
                    log.warning("%s; retrying in %.1f s", exc, backoff)
                    await self._sleep(backoff, stop, deadline)
                    backoff = min(30.0, backoff * 2)
                    continue
                backoff = 0.2
                self.stats.connects += 1
                self._lost.clear()
                await self._subscribe(self._ib)
                await self._until(self._lost, stop, deadline)
                with contextlib.suppress(Exception):
                    self._ib.disconnect()
        finally:
            stop.set()
            await flusher
            self.flush()
        return self.stats

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sleep(self.flush_s, stop, None)
            await asyncio.get_running_loop().run_in_executor(None, self.flush)

    @staticmethod
    async def _sleep(seconds: float, stop: asyncio.Event, deadline: float | None) -> None:
        if deadline is not None:
            seconds = max(0.0, min(seconds, deadline - time.monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    @staticmethod
    async def _until(lost: asyncio.Event, stop: asyncio.Event, deadline: float | None) -> None:
        waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
