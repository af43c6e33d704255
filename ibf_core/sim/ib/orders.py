"""What-if orders in the IB Gateway simulator: ``placeOrder`` with ``whatIf`` answered by an ``openOrder`` carrying
the order state (commission and margin impact), as TWS does; an order meant to be transmitted is refused.

Wire facts (ib_insync 0.9.86 ``client.placeOrder`` and ``decoder.openOrder``, server version 176): placeOrder is
``3, orderId, <contract 12>, secIdType, secId, action, totalQuantity, orderType, lmtPrice, auxPrice, tif, ...`` with
no version field; the fields after ``hidden`` depend on earlier ones (combo legs for BAG, delta-neutral, scale,
hedge, algo), so :func:`parse_place_order` walks them in the client's order to reach ``whatIf``. The answer is
openOrder (message 5, no version field) whose order-state block (status, initMargin/maintMargin/equityWithLoan
Before, Change, After, commission, min/maxCommission, commissionCurrency, warningText) sits between ``whatIf`` and
``randomizeSize``; :func:`open_order_message` writes every field the decoder reads, in its order.

The simulated account (stated, not IB's arithmetic in full): no positions, equity with loan value
:data:`ACCOUNT_EQUITY`; Reg-T margin on the order's value (quantity x limit price, the last close for a market
order): initial 50%, maintenance 25%, long or short alike; the commission is IB's fixed schedule
(:func:`ibf_core.portfolio.costs.ib_commission`) and lowers the equity with loan value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ibf_core.portfolio.costs import ib_commission
from ibf_core.sim.ib.protocol import ACCOUNT, contract_id

ACCOUNT_EQUITY = 1_000_000.0  # USD: the simulated paper account's equity with loan value before any order
INITIAL_MARGIN, MAINTENANCE_MARGIN = 0.50, 0.25  # Reg-T on stocks, of the position's value
WHAT_IF_STATUS = "PreSubmitted"  # the status TWS reports in a what-if answer
ORDER_REJECTED = 201
MSG_NOT_WHAT_IF = (
    "Order rejected - reason:the IB Gateway simulator answers what-if orders only (whatIf=True); "
    "it never transmits an order"
)
MSG_NOT_STOCK = "Order rejected - reason:the IB Gateway simulator prices what-if orders on stocks (STK) only"
UNSET_DOUBLE = 1.7976931348623157e308


@dataclasses.dataclass(frozen=True)
class PlacedOrder:
    """The fields of a placeOrder the simulator acts on."""

    order_id: int
    contract: list[str]  # the 12 contract fields as sent
    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    tif: str
    account: str
    what_if: bool

    @property
    def symbol(self) -> str:
        return self.contract[1].strip().upper()


class _Cursor:
    """Reads a message's fields in order."""

    def __init__(self, fields: list[str], at: int):
        self.fields, self.at = fields, at

    def take(self, n: int = 1) -> list[str]:
        if self.at + n > len(self.fields):
            raise IndexError(f"placeOrder ends after {len(self.fields)} fields")
        out = self.fields[self.at : self.at + n]
        self.at += n
        return out

    def one(self) -> str:
        return self.take()[0]


def _number(text: str) -> float:
    return float(text) if text.strip() else 0.0


def parse_place_order(fields: list[str]) -> PlacedOrder:
    """The order of a placeOrder message (server version >= 145: no version field), read the way the client wrote it."""
    contract = fields[2:14]
    action, quantity, order_type, limit, _aux, tif, _oca, account = fields[16:24]
    cur = _Cursor(fields, 35)  # after hidden (field 34)
    if contract[2] == "BAG":
        legs = int(cur.one())
        cur.take(8 * legs)
        cur.take(int(cur.one()))  # order combo leg prices
        cur.take(2 * int(cur.one()))  # smart combo routing params
    cur.take(32)  # '' (shares allocation), discretionaryAmt ... deltaNeutralAuxPrice
    if fields[cur.at - 2]:  # deltaNeutralOrderType set: its 8 fields follow
        cur.take(8)
    scale = cur.take(7)  # continuousUpdate ... scalePriceIncrement
    if 0 < _number(scale[-1]) < UNSET_DOUBLE:
        cur.take(7)
    hedge = cur.take(4)[-1]  # scaleTable, activeStartTime, activeStopTime, hedgeType
    if hedge:
        cur.take(1)
    cur.take(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if cur.one() == "1":  # delta-neutral contract present
        cur.take(3)
    if cur.one():  # algoStrategy
        cur.take(2 * int(cur.one()))
    _algo_id, what_if = cur.take(2)
    price = _number(limit) if limit.strip() else None
    return PlacedOrder(
        order_id=int(fields[1]), contract=contract, action=action.upper(), quantity=_number(quantity),
        order_type=order_type.upper(), limit_price=price, tif=tif, account=account or ACCOUNT, what_if=what_if == "1",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WhatIfState:
    """The order state of a what-if answer (USD)."""

    commission: float
    init_margin_change: float
    maint_margin_change: float
    equity_change: float
    init_margin_before: float = 0.0
    maint_margin_before: float = 0.0
    equity_before: float = ACCOUNT_EQUITY
    warning: str = ""

    def fields(self) -> list[Any]:
        """status, the nine margin/equity values (before x3, change x3, after x3 as the decoder reads them),
        commission, min and max commission, currency, warning text."""
        before = (self.init_margin_before, self.maint_margin_before, self.equity_before)
        change = (self.init_margin_change, self.maint_margin_change, self.equity_change)
        after = tuple(b + c for b, c in zip(before, change))
        money = [_money(v) for v in (*before, *change, *after)]
        fee = _money(self.commission)
        return [WHAT_IF_STATUS, *money, fee, fee, fee, "USD", self.warning]


def _money(value: float) -> str:
    return f"{value:.2f}"


def what_if_state(order: PlacedOrder, price: float) -> WhatIfState:
    """Commission (IB's fixed schedule) and Reg-T margin change of ``order`` at ``price`` for the simulated account."""
    value = abs(order.quantity) * price
    commission = float(ib_commission(order.quantity, price))
    return WhatIfState(
        commission=commission,
        init_margin_change=INITIAL_MARGIN * value,
        maint_margin_change=MAINTENANCE_MARGIN * value,
        equity_change=-commission,
    )


def open_order_message(order: PlacedOrder, state: WhatIfState, client_id: int, perm_id: int) -> list[Any]:
    """openOrder (message 5) for a what-if answer: every field ib_insync's decoder reads at server version 176."""
    symbol = order.symbol
    con_id = order.contract[0] if order.contract[0] not in ("", "0") else contract_id(symbol)
    limit = "" if order.limit_price is None else repr(order.limit_price)
    return [
        5, order.order_id,
        con_id, symbol, "STK", "", "0", "", "", "SMART", "USD", symbol, symbol,  # conId .. tradingClass
        order.action, repr(float(order.quantity)), order.order_type, limit, "", order.tif,  # .. tif
        "", order.account, "O", 0, "",  # ocaGroup, account, openClose, origin, orderRef
        client_id, perm_id, 0, 0,  # clientId, permId, outsideRth, hidden
        "0", "", "",  # discretionaryAmt, goodAfterTime, (shares allocation)
        "", "", "", "", "",  # faGroup, faMethod, faPercentage, faProfile, modelCode
        "", "0", "", "", 0, "", -1,  # goodTillDate, rule80A, percentOffset, settlingFirm, shortSaleSlot, ..
        "", "", "", "", "", "", 0, 0, 0,  # .. exemptCode, auctionStrategy .. stockRangeUpper, displaySize, block, sweep
        0, "", 3, 0, 0, 0, 0, 0,  # allOrNone, minQty, ocaType, eTradeOnly, firmQuoteOnly, nbboPriceCap, parentId, trigger
        "", 0, "", "",  # volatility, volatilityType, deltaNeutralOrderType (none), deltaNeutralAuxPrice
        0, 0, "", "", "", 0, "",  # continuousUpdate, referencePriceType, trailStop, trailing%, bps, bpsType, legs descr
        0, 0, 0,  # combo legs, order combo legs, smart combo routing params
        "", "", "",  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement (unset)
        "",  # hedgeType (none)
        0, "", "", 0, 0,  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld, delta-neutral contract
        "",  # algoStrategy (none)
        0, 1,  # solicited, whatIf
        *state.fields(),
        0, 0,  # randomizeSize, randomizePrice
        0,  # conditions
        "", "", "", "", "", "", "", 0,  # adjustedOrderType .. adjustableTrailingUnit
        "", "", "", "",  # softDollarTier name, value, display name, cashQty
        0, 0, 0, 0,  # dontUseAutoPriceForHedge, isOmsContainer, discretionaryUpToLimitPrice, usePriceMgmtAlgo
        "", 0, 0,  # duration, postToAts, autoCancelParent
        "", "", "", 0, 0,  # minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole, midOffsetAtHalf
    ]  # fmt: skip


def on_place_order(session: Any, fields: list[str]) -> None:
    """placeOrder: a what-if order is priced and answered; any other order is refused (error 201)."""
    order = parse_place_order(fields)
    session.sim._record_order(order)
    if not order.what_if:
        session.error(order.order_id, ORDER_REJECTED, MSG_NOT_WHAT_IF)
        return
    if order.contract[2] not in ("STK", ""):
        session.error(order.order_id, ORDER_REJECTED, MSG_NOT_STOCK)
        return
    session.spawn(order.order_id, _answer(session, order))


async def _answer(session: Any, order: PlacedOrder) -> None:
    price = order.limit_price
    if price is None or price <= 0:  # a market order is margined at the last close
        bars = await session.sim.bars_for(order.symbol)
        if bars is None:
            session.error(order.order_id, 200, "No security definition has been found for the request")
            return
        price = float(bars["close"].iloc[-1])
    state = what_if_state(order, price)
    session.send(*open_order_message(order, state, session.client_id, perm_id=1_000_000 + order.order_id))


HANDLERS: dict[str, Any] = {"3": on_place_order}
