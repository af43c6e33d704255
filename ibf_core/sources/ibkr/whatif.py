"""What-if orders through TWS / IB Gateway: IB's commission and margin answer for each trade, nothing transmitted.

Each order goes out as ``placeOrder`` with ``whatIf=True`` (ib_insync's ``whatIfOrderAsync``); TWS answers with an
``openOrder`` carrying the order state and never routes the order. The session is opened with the connection
helper of :mod:`ibf_core.sources.ibkr.gateway` (the configured host, ports and client id), not read-only, since a
read-only API session refuses orders of any kind. Transmitting orders is not offered here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ibf_core.sources.errors import SourceError, UnknownSymbolError
from ibf_core.sources.ibkr.gateway import Gateway, ib_client, run_on_private_loop

MARGIN_FIELDS = (
    "initMarginBefore", "initMarginChange", "initMarginAfter",
    "maintMarginBefore", "maintMarginChange", "maintMarginAfter",
    "equityWithLoanBefore", "equityWithLoanChange", "equityWithLoanAfter",
)  # fmt: skip
UNSET = 1.7976931348623157e308  # IB's "no value" double


@dataclass(frozen=True)
class OrderRequest:
    """One limit order to ask IB about: BUY or SELL ``shares`` of ``symbol`` at ``limit`` (USD), good for the day."""

    symbol: str
    side: str
    shares: int
    limit: float


@dataclass(frozen=True)
class WhatIfAnswer:
    """IB's answer to one what-if order: status, commission (min/max, currency), margins (USD), warning text."""

    order: OrderRequest
    status: str
    commission: float | None
    min_commission: float | None
    max_commission: float | None
    currency: str
    margins: dict[str, float | None]  # MARGIN_FIELDS -> value
    warning: str


def _value(raw: Any) -> float | None:
    """An order-state number (IB sends text; its 'unset' double means no value)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and abs(value) < UNSET else None


def _answer(order: OrderRequest, state: Any) -> WhatIfAnswer:
    return WhatIfAnswer(
        order=order,
        status=str(state.status),
        commission=_value(state.commission),
        min_commission=_value(state.minCommission),
        max_commission=_value(state.maxCommission),
        currency=str(state.commissionCurrency),
        margins={name: _value(getattr(state, name)) for name in MARGIN_FIELDS},
        warning=str(state.warningText),
    )


def what_if_orders(source: Any, orders: Sequence[OrderRequest]) -> list[WhatIfAnswer]:
    """IB's what-if answer for each of ``orders`` (in order), over one API session of ``source``'s settings.

    ``source``: an :class:`ibf_core.sources.ibkr.source.IbkrSource` (host, ports, client id, timeouts). Raises
    ``GatewayUnavailableError`` (naming host:port) when no gateway answers, ``SourceError`` naming the symbol when
    IB refuses an order or does not answer within the timeout.
    """
    if not orders:
        return []
    return run_on_private_loop(lambda: _ask(source, list(orders)))


async def _ask(source: Any, orders: list[OrderRequest]) -> list[WhatIfAnswer]:
    lib = ib_client()
    gateway = Gateway(source, readonly=False)
    await gateway.connect()
    try:
        answers = []
        for order in orders:
            try:
                contract = await gateway.qualify(order.symbol)
            except UnknownSymbolError as exc:
                raise SourceError(f"what-if {order.side} {order.shares} {order.symbol}: {exc}") from None
            ib_order = lib.LimitOrder(order.side, order.shares, order.limit, tif="DAY", transmit=True)
            try:
                state = await asyncio.wait_for(gateway.ib.whatIfOrderAsync(contract, ib_order), source.timeout)
            except lib.RequestError as exc:
                raise SourceError(
                    f"what-if {order.side} {order.shares} {order.symbol}: IB error {exc.code}: {exc.message}"
                ) from None
            except asyncio.TimeoutError:
                raise SourceError(
                    f"what-if {order.side} {order.shares} {order.symbol}: no answer within {source.timeout:g}s "
                    "(IBF_IB_TIMEOUT)"
                ) from None
            answers.append(_answer(order, state))
        return answers
    finally:
        gateway.close()
