"""The live collector behind ``ibf stream``: subscribes the universe to IB 5-second real-time bars and top-of-book
quotes through ``ib_insync``, and appends micro-batches to ``intraday_bars`` and ``quotes``.

IB's limits: market-data lines (``IBF_IB_MAX_LINES``): symbols are served in the order of
:func:`ibf_core.streaming.priority.serve_order` (the watch list, the top and bottom of the newest ranking, the rest
as given) and the rest are named as unserved; real-time-bar requests are paced to 60 per 10 minutes; a symbol
without a live subscription (10089/354) is re-requested as delayed data (``reqMarketDataType(3)``) and its rows
say ``delayed``. A dropped connection is reconnected with back-off and every line re-subscribed; 1101
(connectivity restored, data lost) re-subscribes too. Rows are keyed (bar time / quote time), so whatever a
reconnect or a restart sends twice is stored once; a ``kill -9`` loses at most the batch in memory.

Symbols of ``tick_symbols`` (IBF_STREAM_TICK_SYMBOLS) that are served also get tick-by-tick trades (``trades``;
each subscription asks IB for its most recent 1000 trades first, so a reconnect fills its gap and the overlap is
stored once, see :mod:`ibf_core.streaming.tables`) and market depth (``depth``). IB allows few of those
subscriptions (10190 / 309 beyond them): the refused symbols are logged and listed in ``StreamStats.refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ibf_core.sources.ibkr.source import RequestPacer, ib_client
from ibf_core.storage.interface import DiskFullError, TableStore
from ibf_core.streaming.priority import serve_order
from ibf_core.streaming.store import Appender
from ibf_core.streaming.tables import DEPTH, INTRADAY_BARS, QUOTES, TICK_TABLES, TRADES

log = logging.getLogger(__name__)
NEW_YORK = "America/New_York"
NO_SUBSCRIPTION = (10089, 354, 10167)
REALTIME_PER_10MIN = 60
REPLAY_TICKS = 1000  # trades IB re-sends first on a tick-by-tick subscription (its maximum)
CLIENT_ID_IN_USE, CLIENT_ID_TRIES = 326, 10  # 326: try client_id + 1 ... + 10
REFUSED = {10190: "tick_by_tick", 309: "depth"}  # IB's "max number of ... requests has been reached"
DEPTH_SIDES, DEPTH_OPERATIONS = ("ask", "bid"), ("insert", "update", "delete")
_STAT = {INTRADAY_BARS.name: "bars", QUOTES.name: "quotes", TRADES.name: "trades", DEPTH.name: "depth"}  # StreamStats field


@dataclass
class StreamStats:
    """What a collector did (printed by ``ibf stream``, asserted by the tests)."""

    bars: int = 0
    quotes: int = 0
    trades: int = 0
    depth: int = 0
    batches: int = 0
    connects: int = 0
    client_id: int | None = None  # the client id of the latest connection (another when the configured one was in use)
    unserved: list[str] = field(default_factory=list)
    delayed: set[str] = field(default_factory=set)
    refused: dict[str, set[str]] = field(default_factory=dict)  # "tick_by_tick" / "depth" -> symbols IB refused
    # receipt -> queryable (committed); on a live feed add IB's own delivery delay (bar end -> receipt, ~1 s)
    lags_s: list[float] = field(default_factory=list)


class _ClientIdInUse(ConnectionError):
    """IB error 326 on connect."""


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
        tick_symbols: Sequence[str] = (),
        depth_rows: int = 5,
        watchlist: Sequence[str] = (),
        ranking: pd.Series | None = None,
        backoff_max_s: float = 30.0,
        retention_days: int = 0,
        max_pending_rows: int = 500_000,
    ):
        self.store, self.host, self.ports, self.client_id = store, host, ports or [4002], client_id
        self.symbols = list(dict.fromkeys(symbols))
        self.served, unserved = serve_order(self.symbols, watchlist, ranking, max_lines)
        self.bar_types, self.flush_s, self.connect_timeout = bar_types, flush_s, connect_timeout
        self.stats = StreamStats(unserved=unserved)
        # Rows arrive on the event loop while flush() runs in an executor thread: the lock keeps a row from being
        # appended to a batch that flush() has already taken (it was lost, or broke the batch's DataFrame).
        self._rows_lock = threading.Lock()
        self._bars: list[dict[str, Any]] = []
        self._quotes: list[dict[str, Any]] = []
        self._trades: list[dict[str, Any]] = []
        self._depth: list[dict[str, Any]] = []
        wanted = set(tick_symbols)
        self.tick_symbols = [s for s in self.served if s in wanted]
        self.depth_rows = depth_rows
        self.backoff_max_s = backoff_max_s
        self.retention_days = retention_days
        self.max_pending_rows = max_pending_rows
        self.full_disk: DiskFullError | None = None  # the latest flush's, while rows wait for space
        self._pruned_on: dt.date | None = None
        self._market_time: dict[str, pd.Timestamp] = {}  # newest IB time seen per symbol (depth has none)
        self._seen: dict[str, tuple[int, Counter]] = {}  # per symbol: the second and its (price, size) counts
        self._depth_seq: Counter = Counter()
        # One appender per table: it remembers stored keys, so a batch does not re-read the day's partitions.
        self._appenders = {spec.name: Appender(store, spec, floor="time" if spec is TRADES else None)
                           for spec in (INTRADAY_BARS, QUOTES, TRADES, DEPTH)}
        # IB's limit on real-time bar subscriptions: at most realtime_per_10min in any 10 minutes (one pacer for IB)
        self._pacer = RequestPacer(min_interval=0.0, max_requests=realtime_per_10min, window=600.0, identical_gap=0.0)
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
        row = {
            "symbol": symbol, "date": when.tz_convert(NEW_YORK).normalize().tz_localize(None), "time": when, "what": what,
            "open": bar.open_, "high": bar.high, "low": bar.low, "close": bar.close, "volume": float(bar.volume),
            "wap": float(bar.wap), "count": int(bar.count), "received_at": pd.Timestamp.now(tz="UTC"),
        }
        with self._rows_lock:
            self._bars.append(row)

    def _on_ticker(self, symbol: str, ticker: Any) -> None:
        when = pd.Timestamp(ticker.rtTime or ticker.time or dt.datetime.now(dt.timezone.utc)).tz_convert("UTC")

        def num(value: Any) -> float | None:
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

        if ticker.rtTime:
            self._market_time[symbol] = when
        row = {
            "symbol": symbol, "date": when.tz_convert(NEW_YORK).normalize().tz_localize(None), "time": when,
            "bid": num(ticker.bid), "ask": num(ticker.ask), "bid_size": num(ticker.bidSize), "ask_size": num(ticker.askSize),
            "last": num(ticker.last), "last_size": num(ticker.lastSize), "volume": num(ticker.volume),
            "delayed": symbol in self.stats.delayed, "received_at": pd.Timestamp.now(tz="UTC"),
        }
        with self._rows_lock:
            self._quotes.append(row)

    def _on_trade(self, symbol: str, epoch: int, price: float, size: float, exchange: str, conditions: str) -> None:
        # seq: occurrence of (price, size) within the second, counted per subscription (reset on re-subscribe).
        second, counts = self._seen.get(symbol, (None, Counter()))
        if second != epoch:
            second, counts = epoch, Counter()
            self._seen[symbol] = (second, counts)
        seq = counts[(price, size)]
        counts[(price, size)] += 1
        when = pd.Timestamp(epoch, unit="s", tz="UTC")
        self._market_time[symbol] = when
        row = {
            "symbol": symbol, "date": when.tz_convert(NEW_YORK).normalize().tz_localize(None), "time": when, "seq": seq,
            "price": float(price), "size": float(size), "exchange": exchange, "special_conditions": conditions,
            "received_at": pd.Timestamp.now(tz="UTC"),
        }
        with self._rows_lock:
            self._trades.append(row)

    def _on_depth(self, symbol: str, ticker: Any) -> None:
        now = pd.Timestamp.now(tz="UTC")
        when = self._market_time.get(symbol, now)
        date = when.tz_convert(NEW_YORK).normalize().tz_localize(None)
        rows = []
        for tick in ticker.domTicks:
            self._depth_seq[symbol] += 1
            rows.append({
                "symbol": symbol, "date": date, "time": when, "seq": self._depth_seq[symbol],
                "position": int(tick.position), "side": DEPTH_SIDES[int(tick.side)], "price": float(tick.price),
                "size": float(tick.size), "operation": DEPTH_OPERATIONS[int(tick.operation)], "received_at": now,
            })
        with self._rows_lock:
            self._depth += rows

    def flush(self) -> int:
        """Append what arrived since the last flush (one write per table); returns the rows stored.

        A full disk stores nothing of the table it hit (the write is atomic): that table's rows and the later
        tables' stay in memory, ahead of newer rows, for the next flush, with one warning line. What is held is
        bounded by ``max_pending_rows``: past it the collector stops with the disk-full error rather than grow."""
        with self._rows_lock:
            batches = [(INTRADAY_BARS, self._bars), (QUOTES, self._quotes), (TRADES, self._trades), (DEPTH, self._depth)]
            self._bars, self._quotes, self._trades, self._depth = [], [], [], []
        stored = 0
        for i, (spec, rows) in enumerate(batches):
            if not rows:
                continue
            frame = pd.DataFrame(rows)
            try:
                added = self._appenders[spec.name].append(frame)
            except DiskFullError as exc:
                self._hold([rows for _, rows in batches[i:]], exc)
                break
            if spec is INTRADAY_BARS:
                done = pd.Timestamp.now(tz="UTC")
                self.stats.lags_s += (done - frame["received_at"]).dt.total_seconds().tolist()
            setattr(self.stats, _STAT[spec.name], getattr(self.stats, _STAT[spec.name]) + added)
            stored += added
        else:
            self.full_disk = None
        if any(rows for _, rows in batches):
            self.stats.batches += 1
        return stored

    def _hold(self, held: list[list[dict[str, Any]]], exc: DiskFullError) -> None:
        """Put rows a full disk kept out back in front of the rows that arrived meanwhile (their order kept)."""
        with self._rows_lock:
            kept = [[]] * (4 - len(held)) + held  # the tables before the one that failed were stored
            newer = (self._bars, self._quotes, self._trades, self._depth)
            self._bars, self._quotes, self._trades, self._depth = (old + new for old, new in zip(kept, newer))
            pending = self.pending_rows()
        self.full_disk = exc
        if pending > self.max_pending_rows:
            raise DiskFullError(f"{exc}; {pending} rows wait in memory, more than IBF_STREAM_MAX_PENDING_ROWS="
                                f"{self.max_pending_rows}: stopping, they are not stored") from None
        log.warning("%s; %d row(s) kept in memory, written at the next flush", exc, pending)

    def pending_rows(self) -> int:
        """Rows received and not stored yet (call under ``_rows_lock`` for an exact count)."""
        return len(self._bars) + len(self._quotes) + len(self._trades) + len(self._depth)

    def prune(self, today: dt.date | None = None) -> list[str]:
        """Delete the trades/depth/quotes partitions of sessions more than ``retention_days`` before ``today`` (New
        York; 0 keeps all); intraday_bars are kept. Returns ``table/partition`` of what went."""
        today = today or pd.Timestamp.now(tz=NEW_YORK).date()
        self._pruned_on = today
        if self.retention_days <= 0:
            return []
        cutoff = f"{today - dt.timedelta(days=self.retention_days):%Y-%m-%d}"
        gone = []
        for spec in TICK_TABLES:
            old = [name for name in self.store.partitions(spec) if name.split(".", 1)[0] < cutoff]
            if old:
                self.store.write([(spec, name) for name in old], lambda tx, spec=spec, old=old: [tx.delete(spec, n) for n in old])
                gone += [f"{spec.name}/{name}" for name in old]
        if gone:
            log.info("retention (IBF_STREAM_RETENTION_DAYS=%d): deleted %d partition(s) before %s", self.retention_days, len(gone), cutoff)
        return gone

    # ----- connection -----------------------------------------------------------------------------
    async def _connect(self) -> Any:
        last: BaseException | None = None
        for port in self.ports:
            for client_id in range(self.client_id, self.client_id + CLIENT_ID_TRIES + 1):
                try:
                    ib = await self._connect_as(port, client_id)
                except _ClientIdInUse as exc:
                    last = exc
                    continue
                except (OSError, asyncio.TimeoutError) as exc:
                    last = exc
                    break
                if client_id != self.client_id:
                    log.warning("client id %d is in use (IB error 326) at %s:%d; connected as client id %d",
                                self.client_id, self.host, port, client_id)
                self.stats.client_id = client_id
                return ib
        raise ConnectionError(f"IB Gateway not reachable at {self.host}:{','.join(map(str, self.ports))} ({last})")

    async def _connect_as(self, port: int, client_id: int) -> Any:
        """One API connection; raises _ClientIdInUse on 326 (the gateway then closes the socket)."""
        ib = ib_client().IB()
        in_use = asyncio.Event()
        ib.errorEvent += lambda _r, code, _m, _c: in_use.set() if code == CLIENT_ID_IN_USE else None
        connecting = asyncio.ensure_future(
            ib.connectAsync(self.host, port, clientId=client_id, timeout=self.connect_timeout, readonly=True))
        refused = asyncio.ensure_future(in_use.wait())
        await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        refused.cancel()
        if in_use.is_set():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            ib.disconnect()
            raise _ClientIdInUse(f"client id {client_id} is in use at {self.host}:{port}")
        try:
            connecting.result()
        except BaseException:
            ib.disconnect()
            raise
        return ib

    async def _subscribe(self, ib: Any) -> None:
        lib = ib_client()

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            if code in NO_SUBSCRIPTION and contract is not None and contract.symbol not in self.stats.delayed:
                self.stats.delayed.add(contract.symbol)
                log.warning("%s: no live market-data subscription (%d); using delayed data", contract.symbol, code)
                asyncio.get_event_loop().call_soon(self._request_delayed, ib, contract.symbol)
            elif code in REFUSED and contract is not None:
                kind = REFUSED[code]
                if contract.symbol not in self.stats.refused.setdefault(kind, set()):
                    log.warning("%s: IB refused %s data (%d: %s)", contract.symbol, kind.replace("_", "-"), code, message)
                self.stats.refused[kind].add(contract.symbol)
            elif code == 1101:  # restored, data lost: every line again
                self._lost.set()

        ib.errorEvent += on_error
        ib.disconnectedEvent += lambda: self._lost.set()
        for symbol in self.served:
            contract = lib.Stock(symbol, "SMART", "USD")
            self._request_quotes(ib, symbol, contract)
        for symbol in self.served:
            for what in self.bar_types:
                await self._pacer.acquire("reqRealTimeBars")
                bars = ib.reqRealTimeBars(lib.Stock(symbol, "SMART", "USD"), 5, what, False)
                bars.updateEvent += lambda b, new, s=symbol, w=what: self._on_bar(s, w, b, new)
        self._request_ticks(ib)

    def _request_ticks(self, ib: Any) -> None:
        """Tick-by-tick trades and depth of the served tick symbols (each contract its own ticker)."""
        lib = ib_client()
        if not self.tick_symbols:
            return
        self._seen.clear()  # occurrences count per subscription
        original = ib.wrapper.tickByTickAllLast

        # ib_insync 0.9.86 stamps TickByTickAllLast with the receipt time; IB's own trade time is this argument.
        def on_trade(req_id: int, tick_type: int, epoch: int, price: float, size: float, attrib: Any,
                     exchange: str, conditions: str) -> None:
            original(req_id, tick_type, epoch, price, size, attrib, exchange, conditions)
            ticker = ib.wrapper.reqId2Ticker.get(req_id)
            if ticker is not None:
                self._on_trade(ticker.contract.symbol, int(epoch), price, size, exchange, conditions)

        ib.wrapper.tickByTickAllLast = on_trade
        for symbol in self.tick_symbols:
            ib.reqTickByTickData(lib.Stock(symbol, "SMART", "USD"), "AllLast", REPLAY_TICKS, False)
            depth = ib.reqMktDepth(lib.Stock(symbol, "SMART", "USD"), self.depth_rows, True)
            depth.updateEvent += lambda t, s=symbol: self._on_depth(s, t)

    def _request_quotes(self, ib: Any, symbol: str, contract: Any) -> None:
        ticker = ib.reqMktData(contract, "233", False, False)
        ticker.updateEvent += lambda t, s=symbol: self._on_ticker(s, t)

    def _request_delayed(self, ib: Any, symbol: str) -> None:
        ib.reqMarketDataType(3)
        self._request_quotes(ib, symbol, ib_client().Stock(symbol, "SMART", "USD"))

    async def run(self, duration_s: float | None = None, stop: asyncio.Event | None = None) -> StreamStats:
        """Collect until ``duration_s`` passes or ``stop`` is set; reconnects meanwhile. Flushes at the end."""
        stop = stop or asyncio.Event()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        backoff = min(0.2, self.backoff_max_s)
        await asyncio.get_running_loop().run_in_executor(None, self.prune)
        flusher = asyncio.ensure_future(self._flush_loop(stop))
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    self._ib = await self._connect()
                except ConnectionError as exc:
                    log.warning("%s; retrying in %.1f s", exc, backoff)
                    await self._sleep(backoff, stop, deadline)
                    backoff = min(self.backoff_max_s, backoff * 2)
                    continue
                backoff = min(0.2, self.backoff_max_s)
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
        if self.full_disk is not None:  # still full at the end: say what was not stored, do not exit as if all were
            raise DiskFullError(f"{self.full_disk}; {self.pending_rows()} rows received were not stored")
        return self.stats

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                await self._sleep(self.flush_s, stop, None)
                await loop.run_in_executor(None, self.flush)
                if pd.Timestamp.now(tz=NEW_YORK).date() != self._pruned_on:  # once a day
                    try:
                        await loop.run_in_executor(None, self.prune)
                    except DiskFullError as exc:  # deleting needs no space, but the table folders may be created
                        log.warning("retention skipped: %s", exc)
        except BaseException:
            stop.set()  # the collector stops with this error instead of receiving rows nobody stores
            raise

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
