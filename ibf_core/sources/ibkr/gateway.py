"""One connection to TWS / IB Gateway on a private event loop: connect over the configured ports, send requests,
classify IB's errors."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

from ibf_core.sources.errors import ClientIdInUseError, GatewayUnavailableError, SourceError, UnknownSymbolError
from ibf_core.sources.ibkr.parsing import BAR_SIZE

# Heavy imports (tenacity) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger("ibf_core.sources.ibkr")  # the name it logged under before the split

# The one place naming the client library: "ib_async" (the maintained fork, same API) is a drop-in.
IB_CLIENT_MODULE = "ib_insync"
T = TypeVar("T")
NO_DATA_MARKERS = ("no data", "returned no data")
PACING_MARKERS = ("pacing violation", "query cancelled")
CONNECTIVITY_LOST, CONNECTIVITY_RESTORED = 1100, (1101, 1102)
NO_SECURITY_DEFINITION, CLIENT_ID_IN_USE, HISTORICAL_ERROR = 200, 326, 162


def ib_client() -> ModuleType:
    """The IB client library, imported on first use (it is heavy and binds an event loop at import)."""
    return importlib.import_module(IB_CLIENT_MODULE)


# ---- transient failures (retried), internal --------------------------------------------------------------
class TransientError(Exception):
    """A failure worth retrying after a backoff."""

    code: int | None = None


class PacingError(TransientError):
    code = HISTORICAL_ERROR


class DroppedError(TransientError):
    """The socket to TWS closed during a request."""


class RestoredError(TransientError):
    """Connectivity came back (1102) while a request was in flight; it must be asked again."""

    code = CONNECTIVITY_LOST


class NotRestoredError(Exception):
    """1100 and no 1102 within the timeout."""


class NoReplyError(Exception):
    """No answer within the timeout."""


# ---- one API session -------------------------------------------------------------------------------------
class Gateway:
    """An API connection with port failover, reconnects and request/error plumbing. Lives on one loop."""

    def __init__(self, source: Any, readonly: bool = True):  # the IbkrSource it serves (it imports this module)
        """``readonly``: a read-only API session (market data); what-if orders need ``False`` (TWS refuses orders,
        even what-if ones, on a read-only session)."""
        self.source, self.readonly = source, readonly
        self.ib: Any = None
        self.port: int | None = None
        self.link_up = asyncio.Event()  # TWS <-> IB servers (cleared by 1100, set by 1101/1102)
        self.link_down = asyncio.Event()
        self.link_up.set()
        self.connections = 0

    # connection
    async def connect(self) -> None:
        """Try every configured port in order; the first that completes the API handshake wins."""
        src, failures = self.source, []
        for port in src.ports:
            try:
                self.ib = await self._connect_port(port)
            except ClientIdInUseError:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                failures.append(f"{src.host}:{port}: {_describe(exc)}")
                continue
            self.port, self.connections = port, self.connections + 1
            self.link_up.set()
            self.link_down.clear()
            log.info("connected to IB at %s:%s (client id %s)", src.host, port, src.client_id)
            return
        tried = ", ".join(str(p) for p in src.ports)
        raise GatewayUnavailableError(
            f"no TWS / IB Gateway accepted an API connection at {src.host} on port(s) {tried} "
            f"({'; '.join(failures)}). Start TWS or IB Gateway with the API enabled, "
            "or set IBF_IB_HOST / IBF_IB_PORTS."
        )

    async def _connect_port(self, port: int) -> Any:
        src, lib = self.source, ib_client()
        ib = lib.IB()
        ib.RaiseRequestErrors = True  # request errors raise RequestError instead of returning []
        in_use: list[str] = []
        closed = asyncio.Event()

        def on_error(req_id: int, code: int, message: str, _contract: Any) -> None:
            if code == CLIENT_ID_IN_USE:
                in_use.append(message)
                closed.set()
            self._on_error(code)

        ib.errorEvent += on_error
        ib.client.apiError += lambda _msg: closed.set()  # socket closed before the API was ready
        connecting = asyncio.ensure_future(
            ib.connectAsync(src.host, port, clientId=src.client_id, timeout=src.connect_timeout, readonly=self.readonly)
        )
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({connecting, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if in_use or not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            ib.disconnect()
            if in_use:
                raise ClientIdInUseError(
                    f"client id {src.client_id} is already in use at {src.host}:{port} "
                    f"(IB error {CLIENT_ID_IN_USE}: {in_use[0]}); set IBF_IB_CLIENT_ID to a free id"
                )
            raise ConnectionError("TWS closed the connection during the handshake")
        connecting.result()
        return ib

    def _on_error(self, code: int) -> None:
        if code == CONNECTIVITY_LOST:
            self.link_up.clear()
            self.link_down.set()
        elif code in CONNECTIVITY_RESTORED:
            self.link_down.clear()
            self.link_up.set()

    def is_connected(self) -> bool:
        return self.ib is not None and self.ib.isConnected()

    async def ensure_connected(self) -> None:
        """Reconnect with exponential backoff after the socket dropped.

        TWS may still hold the old session's client id for a moment, so 326 is retried here too.
        """
        if self.is_connected():
            return
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        self.close()
        src = self.source
        log.warning("IB connection lost; reconnecting to %s", src.host)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((GatewayUnavailableError, ClientIdInUseError)),
            stop=stop_after_attempt(src.retries + 1),
            wait=wait_exponential(multiplier=src.backoff, max=src.max_backoff),
            reraise=True,
        )
        await retrying(self.connect)

    def close(self) -> None:
        if self.ib is not None:
            self.ib.disconnect()
            self.ib = None

    # requests
    async def qualify(self, symbol: str) -> Any:
        lib = ib_client()
        contract = lib.Stock(symbol, "SMART", "USD")
        try:
            found = await asyncio.wait_for(self.ib.qualifyContractsAsync(contract), self.source.timeout)
        except lib.RequestError as exc:
            if exc.code == NO_SECURITY_DEFINITION:
                raise UnknownSymbolError(symbol, f"IB error {exc.code}: {exc.message}") from None
            raise SourceError(f"{symbol}: contract lookup failed: IB error {exc.code}: {exc.message}") from None
        except ConnectionError as exc:
            raise DroppedError(f"connection dropped during the contract lookup ({exc})") from None
        except asyncio.TimeoutError:
            raise NoReplyError(f"no contract details within {self.source.timeout:g}s") from None
        if not found:
            raise UnknownSymbolError(symbol, "IB returned no (or more than one) matching stock on SMART/USD")
        return contract

    async def history(self, contract: Any, end_date_time: str, duration: str, what: str) -> list[Any]:
        """One reqHistoricalData; [] for IB's 'no data'. Watches 1100/1102 while waiting."""
        lib, ib, timeout = ib_client(), self.ib, self.source.timeout
        if not self.link_up.is_set():
            await self._await_restored(timeout)
        # The request is issued by hand (as IB.reqHistoricalDataAsync does) to keep its reqId: on a timeout
        # or 1100 it must be cancelled on the wire, and reqHistoricalDataAsync's own timeout returns [] — the
        # same as "no data".
        try:
            req_id = ib.client.getReqId()
            future = ib.wrapper.startReq(req_id, contract)
            ib.client.reqHistoricalData(req_id, contract, end_date_time, duration, BAR_SIZE, what, True, 1, False, [])
        except ConnectionError as exc:
            raise DroppedError(f"connection dropped before the request went out ({exc})") from None
        lost = asyncio.ensure_future(self.link_down.wait())
        try:
            done, _ = await asyncio.wait({future, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if future in done:
            return self._result(future, lib)
        if lost in done:
            restored = await self._restored_within(timeout)
            if future.done():
                return self._result(future, lib)
            self._cancel(req_id, future)
            if not restored:
                raise NotRestoredError(_not_restored_text(timeout))
            raise RestoredError("connectivity to IB was lost (1100) and restored (1102) during the request")
        self._cancel(req_id, future)
        raise NoReplyError(f"no reply within {timeout:g}s (IBF_IB_TIMEOUT); TWS may be busy or the request too large")

    def _result(self, future: asyncio.Future, lib: ModuleType) -> list[Any]:
        try:
            return list(future.result())
        except lib.RequestError as exc:
            text = exc.message.lower()
            if exc.code == HISTORICAL_ERROR and any(m in text for m in NO_DATA_MARKERS):
                return []
            if exc.code == HISTORICAL_ERROR and any(m in text for m in PACING_MARKERS):
                raise PacingError(exc.message) from None
            raise
        except ConnectionError as exc:
            raise DroppedError(f"connection dropped during the request ({exc})") from None

    def _cancel(self, req_id: int, future: asyncio.Future) -> None:
        future.cancel()
        if self.is_connected():
            self.ib.client.cancelHistoricalData(req_id)

    async def _restored_within(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.link_up.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _await_restored(self, timeout: float) -> None:
        if not await self._restored_within(timeout):
            raise NotRestoredError(_not_restored_text(timeout))


def _not_restored_text(timeout: float) -> str:
    return f"IB error {CONNECTIVITY_LOST}: connectivity to IB lost and not restored within {timeout:g}s"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ---- running coroutines without a caller loop ----------------------------------------------------------------
def run_on_private_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh event loop in a helper thread and return its result (or raise its error)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # ib_insync looks the loop up with get_event_loop()
        try:
            outcome["value"] = loop.run_until_complete(make())
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=target, name="ibkr-client", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
