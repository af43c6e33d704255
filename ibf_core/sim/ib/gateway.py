"""A loopback IB Gateway simulator that speaks the real TWS/Gateway wire protocol.

It serves daily bars from a canonical ``ibf_core.market.bars`` frame (or any ``BarSource``) to the real
``ib_insync`` / ``ib_async`` clients, with switchable faults (pacing violations, unknown symbols, dropped
sockets, connectivity loss 1100/1102, slow replies, client id in use) and a log of every historical request,
so tests and users can exercise ``IbkrSource`` without TWS. Field orders follow the ib_insync 0.9.86
client/decoder (server version 176: no version field in contractData, a mandatory 6th field in errors).
A frame with a ``spread`` column (relative quoted spread) also gets daily ``BID_ASK`` bars; symbols and days
without a spread answer 162 "no data", as IB does for instruments without quote history.
What-if orders (placeOrder with whatIf) get IB's openOrder answer; other orders are refused (``sim.ib.orders``).

Usage::

    with GatewaySimulator(frame) as sim:          # or GatewaySimulator(SampleSource())
        port = sim.port                            # 127.0.0.1, free port
        sim.set_faults(pacing_violations=2)        # from any thread
        ...
        sim.request_log                            # parsed historical requests
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pandas as pd

from ibf_core.sim.faults import FaultSwitchboard, serve_until_stopped
from ibf_core.sim.ib.live import HANDLERS as LIVE_HANDLERS
from ibf_core.sim.ib.live import LiveClock, nightly_reset
from ibf_core.sim.ib.orders import HANDLERS as ORDER_HANDLERS
from ibf_core.sim.ib.protocol import (
    ACCOUNT,
    DEFAULT_HISTORY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    EASTERN,
    FARM_NOTICES,
    MSG_CLIENT_ID,
    MSG_LOST,
    MSG_NO_DATA,
    MSG_NO_SECDEF,
    MSG_PACING,
    MSG_RESTORED,
    QUOTE_WHAT,
    SERVER_VERSION,
    SUPPORTED_WHAT,
    VALIDATION,
    Faults,
    HistoricalRequest,
    Reject,
    SimulatorError,
    bar_rows,
    bid_ask_rows,
    check_duration_vs_bar_size,
    contract_data,
    contract_id,
    historical_data_message,
    normalise_frame,
    parse_duration,
    parse_end_date_time,
    symbol_for_con_id,
    symbol_rows,
    window_start,
)
from ibf_core.sources.errors import SourceError
from ibf_core.sources.sample import SampleSource

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.sources.base import BarSource

log = logging.getLogger("ibf_core.gateway_sim")  # the name it logged under before the move


class GatewaySimulator(FaultSwitchboard):
    """IB Gateway on loopback, in a background thread with its own event loop."""

    _fault_type = Faults

    def __init__(
        self,
        bars: pd.DataFrame | BarSource | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        history: tuple[dt.date, dt.date | None] = DEFAULT_HISTORY,
        now: Callable[[], dt.datetime] | None = None,
        live_clock: Any = None,
    ):
        """``bars``: a canonical bar frame, or a BarSource loaded lazily per symbol over ``history``.

        ``now`` (tz-aware) is the gateway clock used for an empty endDateTime; default: real time.
        ``live_clock`` (:class:`ibf_core.sim.ib.live.LiveClock`): the market time real-time bars and quotes are
        streamed at (e.g. a past session at 20x speed); default: real time.
        """
        self.host, self._requested_port = host, port
        self._frame = None
        self._source = None
        if bars is None:
            bars = _default_source()
        if hasattr(bars, "fetch_daily_bars"):
            self._source = bars
        else:
            self._frame = normalise_frame(bars)
        self._history = history
        self._now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self._faults = Faults.coerce(faults)
        if live_clock is None:
            live_clock = LiveClock(dt.datetime.now(dt.timezone.utc))
        self.live_clock = live_clock
        self._live_log: list[tuple[str, str, str, int]] = []
        self.resets: list[tuple[Any, Any]] = []  # (start, end) market times of the nightly resets so far
        self._lock = threading.Lock()
        self._bars_cache: dict[str, Any] = {}
        self._log: list[HistoricalRequest] = []
        self._contract_log: list[str] = []
        self._order_log: list[Any] = []  # every placeOrder received (ibf_core.sim.ib.orders.PlacedOrder)
        self._handshakes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        self.port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> int:
        """Start listening; returns the bound port."""
        if self._thread is not None:
            raise SimulatorError("simulator already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ib-gateway-sim", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        try:
            self.port = future.result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        log.info("IB gateway simulator listening on %s:%s", self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Close the listener and every client connection, then end the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            except (TimeoutError, RuntimeError):  # pragma: no cover - loop already gone
                log.warning("simulator shutdown timed out")
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> GatewaySimulator:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._on_client, self.host, self._requested_port)
        return self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.close()
        if self._server is not None:
            await self._server.wait_closed()
        # Let connection handlers and delayed replies finish before the loop stops, so none is left pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)

    def _faults_changed(self) -> None:
        seconds = self._faults.nightly_reset_seconds
        if seconds is not None and self._loop is not None:  # a one-shot action, not a standing fault
            self._faults = dataclasses.replace(self._faults, nightly_reset_seconds=None)
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(nightly_reset(self, seconds)))

    # ---- logs (thread-safe; faults come from FaultSwitchboard) ----------------------------------------
    @property
    def request_log(self) -> list[HistoricalRequest]:
        """Copies of every historical request received, oldest first."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._log]

    def historical_requests(
        self, what_to_show: str | None = None, symbol: str | None = None
    ) -> list[HistoricalRequest]:
        """The request log filtered by whatToShow and/or symbol."""
        return [
            r
            for r in self.request_log
            if (what_to_show is None or r.what_to_show == what_to_show) and (symbol is None or r.symbol == symbol)
        ]

    @property
    def contract_requests(self) -> list[str]:
        """Symbols of every reqContractDetails received."""
        with self._lock:
            return list(self._contract_log)

    @property
    def handshakes(self) -> int:
        """Completed API handshakes (one per successful client connection)."""
        with self._lock:
            return self._handshakes

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._contract_log.clear()

    def _record(self, entry: HistoricalRequest | str) -> None:
        with self._lock:
            if isinstance(entry, str):
                self._contract_log.append(entry)
            else:
                self._log.append(entry)

    @property
    def placed_orders(self) -> list[Any]:
        """Every placeOrder received (what-if or refused), oldest first."""
        with self._lock:
            return list(self._order_log)

    def _record_order(self, order: Any) -> None:
        with self._lock:
            self._order_log.append(order)

    def _record_live(self, entry: tuple[str, str, str, int]) -> None:
        with self._lock:
            self._live_log.append(entry)

    def live_requests(self) -> list[tuple[str, str, str, int]]:
        """(kind, symbol, what or LIVE/DELAYED, client id) of every real-time-bar and market-data line granted."""
        with self._lock:
            return list(self._live_log)

    def _count_handshake(self) -> None:
        with self._lock:
            self._handshakes += 1

    # ---- data ------------------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        now = self._now()
        return now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)

    async def bars_for(self, symbol: str) -> pd.DataFrame | None:
        """The symbol's bars (date-sorted), or None when the symbol is unknown. Loaded once per symbol."""
        if symbol in self.faults.unknown_symbols:
            return None
        if symbol not in self._bars_cache:
            if self._frame is not None:
                self._bars_cache[symbol] = symbol_rows(self._frame, symbol)
            else:
                loop = asyncio.get_running_loop()
                self._bars_cache[symbol] = await loop.run_in_executor(None, self._load_from_source, symbol)
        return self._bars_cache[symbol]

    def _load_from_source(self, symbol: str) -> pd.DataFrame | None:
        start, end = self._history
        end = end or self.now().date()
        try:
            frame = self._source.fetch_daily_bars([symbol], start, end)
        except SourceError as exc:
            log.info("simulator source has no %s: %s", symbol, exc)
            return None
        return symbol_rows(normalise_frame(frame), symbol)


def _default_source() -> Any:
    """The bundled sample bars."""
    return SampleSource()


# ---- one client connection --------------------------------------------------------------------------
class _Session:
    """The server side of one API client connection."""

    def __init__(self, sim: GatewaySimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.sim, self.reader, self.writer = sim, reader, writer
        self.client_id = -1
        self.pending: dict[int, asyncio.Task] = {}
        self.connected_to_ib = asyncio.Event()  # cleared between 1100 and 1102
        self.connected_to_ib.set()
        self.restorer: asyncio.Future | None = None
        self.closed = False

    # framing
    def send(self, *fields: Any) -> None:
        if self.closed or self.writer.is_closing():  # the client went away: the reader notices on its next read
            return
        payload = "".join(f"{f}\0" for f in fields).encode()
        self.writer.write(struct.pack(">I", len(payload)) + payload)

    def error(self, req_id: int, code: int, message: str) -> None:
        # Server versions >= 166 require the sixth field (advancedOrderRejectJson), sent empty.
        self.send(4, 2, req_id, code, message, "")

    async def read_frame(self) -> list[str]:
        size = struct.unpack(">I", await self.reader.readexactly(4))[0]
        fields = (await self.reader.readexactly(size)).decode(errors="replace").split("\0")
        return fields[:-1] if fields and fields[-1] == "" else fields

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for task in [*self.pending.values(), self.restorer]:
                if task is not None:
                    task.cancel()
            self.writer.close()

    async def run(self) -> None:
        try:
            if await self.reader.readexactly(4) != b"API\0":
                return
            await self.read_frame()  # "v157..178[ +PACEAPI]": any range works, we answer 176
            eastern = dt.datetime.now(dt.timezone.utc).astimezone(ZoneInfo(EASTERN))
            self.send(SERVER_VERSION, eastern.strftime("%Y%m%d %H:%M:%S ") + (eastern.tzname() or "EST"))
            while not self.closed:
                fields = await self.read_frame()
                if fields:
                    self.dispatch(fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # client went away
        except asyncio.CancelledError:
            pass
        finally:
            self.close()

    def dispatch(self, fields: list[str]) -> None:
        handler = self.HANDLERS.get(fields[0])
        if handler is None:
            log.debug("simulator ignores message %s", fields[0])
            return
        try:
            handler(self, fields)
        except (ValueError, IndexError) as exc:  # malformed message: TWS answers 320 and carries on
            log.warning("simulator could not read message %s: %s", fields[:3], exc)
            self.error(-1, 320, f"Error reading request: {exc}")

    # start-up
    def on_start_api(self, fields: list[str]) -> None:
        self.client_id = int(fields[2])
        if self.client_id in self.sim.faults.client_ids_in_use:
            self.error(-1, 326, MSG_CLIENT_ID)
            self.close()
            return
        self.sim._count_handshake()
        self.send(15, 1, ACCOUNT)
        self.send(9, 1, 1)
        for code, text in FARM_NOTICES:
            self.error(-1, code, text)

    def on_positions(self, _f: list[str]) -> None:
        self.send(62, 1)

    def on_open_orders(self, _f: list[str]) -> None:
        self.send(53, 1)

    def on_completed_orders(self, _f: list[str]) -> None:
        self.send(102)

    def on_account_updates(self, fields: list[str]) -> None:
        if fields[2] == "1":
            self.send(8, 1, dt.datetime.now().strftime("%H:%M"))
            self.send(54, 1, fields[3] or ACCOUNT)

    def on_account_updates_multi(self, fields: list[str]) -> None:
        self.send(74, 1, fields[2])

    def on_account_summary(self, fields: list[str]) -> None:
        self.send(64, 1, fields[2])

    def on_executions(self, fields: list[str]) -> None:
        self.send(55, 1, fields[2])

    def on_req_ids(self, _f: list[str]) -> None:
        self.send(9, 1, 1)

    def on_managed_accounts(self, _f: list[str]) -> None:
        self.send(15, 1, ACCOUNT)

    def on_current_time(self, _f: list[str]) -> None:
        self.send(49, 1, int(time.time()))

    # contracts
    def on_contract_details(self, fields: list[str]) -> None:
        req_id = int(fields[2])
        contract = fields[3:15]
        self.spawn(req_id, self.contract_details(req_id, contract))

    async def contract_details(self, req_id: int, contract: list[str]) -> None:
        con_id, symbol, sec_type = contract[0], contract[1].strip().upper(), contract[2]
        currency = contract[9]
        self.sim._record(symbol)
        known = sec_type in ("STK", "") and currency in ("USD", "") and await self.sim.bars_for(symbol) is not None
        if not known or (con_id not in ("", "0") and int(con_id) != contract_id(symbol)):
            self.error(req_id, 200, MSG_NO_SECDEF)
            return
        self.send(*contract_data(req_id, symbol))
        self.send(52, 1, req_id)

    # history
    def on_historical_data(self, fields: list[str]) -> None:
        req_id = int(fields[1])
        contract = fields[2:14]
        symbol = contract[1].strip().upper() or symbol_for_con_id(contract[0])
        end, bar_size, duration, use_rth, what, format_date = fields[15:21]
        keep_up_to_date = fields[21] if len(fields) > 21 else "0"
        request = HistoricalRequest(
            symbol=symbol, end_date_time=end, duration=duration, bar_size=bar_size, what_to_show=what,
            use_rth=use_rth == "1", format_date=int(format_date or 1), req_id=req_id,
            client_id=self.client_id, timestamp=time.time(),
        )  # fmt: skip
        self.sim._record(request)
        if self.sim._take("drop_connections"):
            request.outcome = "dropped"
            self.close()
            return
        self.spawn(req_id, self.historical(request, keep_up_to_date == "1"))

    def on_cancel_historical(self, fields: list[str]) -> None:
        task = self.pending.pop(int(fields[2]), None)
        if task is not None:
            task.cancel()

    def spawn(self, req_id: int, coro: Any) -> None:
        task = asyncio.ensure_future(self.guarded(req_id, coro))
        self.pending[req_id] = task
        task.add_done_callback(lambda _t: self.pending.pop(req_id, None) if self.pending.get(req_id) is _t else None)

    async def guarded(self, req_id: int, coro: Any) -> None:
        """Turn a simulator bug into an IB error on that request instead of a silently dead task."""
        try:
            await coro
        except Exception as exc:
            log.exception("simulator failed on request %s", req_id)
            self.error(req_id, 320, f"Error processing request: {exc}")

    async def historical(self, request: HistoricalRequest, keep_up_to_date: bool) -> None:
        try:
            if self.sim._take("connectivity_losses"):
                if not await self.lose_connectivity(request):
                    return
            await self.connected_to_ib.wait()
            try:
                rows = await self.select_bars(request, keep_up_to_date)
            except Reject as reject:
                await self.delay()
                request.outcome = f"error:{reject.code}"
                self.error(request.req_id, reject.code, reject.message)
                return
            await self.delay()
            request.outcome = f"bars:{len(rows)}"
            self.send(*historical_data_message(request.req_id, rows))
        except asyncio.CancelledError:
            if request.outcome == "pending":
                request.outcome = "cancelled"

    async def lose_connectivity(self, request: HistoricalRequest) -> bool:
        """Send 1100 (1102 follows on its own); True when the in-flight request should still be answered."""
        faults = self.sim.faults
        self.connected_to_ib.clear()
        self.error(-1, 1100, MSG_LOST)
        if faults.restore_after is not None:
            # Detached from the request: a client that cancels meanwhile must still see 1102.
            self.restorer = asyncio.ensure_future(self.restore_later(faults.restore_after))
        if faults.restore_after is None or not faults.answer_after_restore:
            request.outcome = "lost"
            return False
        return True

    async def restore_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.error(-1, 1102, MSG_RESTORED)
        self.connected_to_ib.set()

    async def delay(self) -> None:
        seconds = self.sim.faults.reply_delay
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def select_bars(self, request: HistoricalRequest, keep_up_to_date: bool) -> list[tuple]:
        """Validate like TWS does, then pick the bars; raises Reject with the IB error to send."""
        if self.sim._take("pacing_violations"):
            raise Reject(162, MSG_PACING)
        count, unit = parse_duration(request.duration)
        check_duration_vs_bar_size(count, unit, request.bar_size)
        what = request.what_to_show.upper()
        if what == "ADJUSTED_LAST" and request.end_date_time.strip():
            # Real TWS rejects an end date with adjusted data; callers must ask with endDateTime=''.
            raise Reject(321, VALIDATION + "End date not supported with adjusted last")
        if keep_up_to_date:
            raise Reject(321, VALIDATION + "the gateway simulator does not stream bars (keepUpToDate)")
        if what in QUOTE_WHAT and what not in SUPPORTED_WHAT:
            raise Reject(162, MSG_NO_DATA.format(symbol=request.symbol, what=what.title()))
        if what not in SUPPORTED_WHAT:
            raise Reject(321, VALIDATION + f"Invalid what to show '{request.what_to_show}'")
        if request.bar_size != "1 day":
            only_daily = f"the gateway simulator serves '1 day' bars only, not '{request.bar_size}'"
            raise Reject(321, VALIDATION + only_daily)
        end = parse_end_date_time(request.end_date_time, self.sim.now())
        bars = await self.sim.bars_for(request.symbol)
        if bars is None:
            raise Reject(200, MSG_NO_SECDEF)
        start = window_start(end, count, unit)
        picked = bars[(bars["date"] >= pd.Timestamp(start)) & (bars["date"] <= pd.Timestamp(end))]
        if what == "BID_ASK":
            # Quote history exists only where the frame has a spread; IB says "no data" for the rest.
            picked = picked[picked["spread"].notna()] if "spread" in picked.columns else picked.iloc[:0]
        if picked.empty:
            raise Reject(162, MSG_NO_DATA.format(symbol=request.symbol, what=what.title()))
        if what == "BID_ASK":
            return bid_ask_rows(picked)
        return bar_rows(picked, adjusted=what == "ADJUSTED_LAST")

    HANDLERS: dict[str, Callable[[_Session, list[str]], None]] = {}


_Session.HANDLERS = {
    "71": _Session.on_start_api,
    "61": _Session.on_positions,
    "5": _Session.on_open_orders,
    "16": _Session.on_open_orders,
    "15": lambda _s, _f: None,  # reqAutoOpenOrders: nothing to answer
    "99": _Session.on_completed_orders,
    "6": _Session.on_account_updates,
    "76": _Session.on_account_updates_multi,
    "62": _Session.on_account_summary,  # ib_insync re-subscribes after 1102
    "7": _Session.on_executions,
    "8": _Session.on_req_ids,
    "17": _Session.on_managed_accounts,
    "49": _Session.on_current_time,
    "9": _Session.on_contract_details,
    "20": _Session.on_historical_data,
    "25": _Session.on_cancel_historical,
}


_Session.HANDLERS.update(LIVE_HANDLERS)
_Session.HANDLERS.update(ORDER_HANDLERS)


# ---- CLI entry ------------------------------------------------------------------------------------
def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    bars: pd.DataFrame | BarSource | None = None,
    faults: Faults | Mapping[str, Any] | None = None,
    *,
    announce: Callable[[str], None] = print,
    stop_event: threading.Event | None = None,
    live_clock: Any = None,
) -> None:
    """Run a simulator in the foreground until Ctrl-C, SIGTERM or ``stop_event``; ``bars`` None = the sample bars."""
    sim = GatewaySimulator(bars, faults, host=host, port=port, live_clock=live_clock)
    serve_until_stopped(
        sim,
        "IB Gateway simulator",
        lambda: f"{host}:{sim.port} (server version {SERVER_VERSION}, account {ACCOUNT})",
        announce,
        stop_event,
    )
