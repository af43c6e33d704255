"""What-if orders: the real ib_insync client against the gateway simulator on a free loopback port.

The simulator must answer placeOrder(whatIf) with the openOrder TWS sends (commission on IB's fixed schedule, Reg-T
margin), refuse an order meant to be transmitted, and ibf's what-if helper must read the answer back.
"""

import asyncio
import socket

import ib_insync
import pytest
from helpers.portfolio import order_bars

from ibf_core.portfolio.costs import ib_commission
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.sim.ib.orders import (
    ACCOUNT_EQUITY,
    ORDER_REJECTED,
    PlacedOrder,
    WhatIfState,
    open_order_message,
    what_if_state,
)
from ibf_core.sim.ib.protocol import SERVER_VERSION
from ibf_core.sources.errors import GatewayUnavailableError, SourceError
from ibf_core.sources.ibkr.gateway import run_on_private_loop
from ibf_core.sources.ibkr.source import IbkrSource
from ibf_core.sources.ibkr.whatif import MARGIN_FIELDS, OrderRequest, what_if_orders


@pytest.fixture
def sim():
    with GatewaySimulator(order_bars()) as gateway:
        yield gateway


def source_for(port: int) -> IbkrSource:
    return IbkrSource(ports=[port], client_id=11, timeout=10, retries=0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_what_if_round_trip_answers_ib_fixed_commission_and_reg_t_margin(sim):
    # IB's published examples: 100 shares at USD 25 = 1.00; 1,000 at 25 = 5.00; 1,000 at 0.25 = 2.50 (1% cap).
    orders = [OrderRequest("AAA", "BUY", 100, 25.0), OrderRequest("BBB", "SELL", 1000, 25.0),
              OrderRequest("FFF", "BUY", 1000, 0.25)]
    answers = what_if_orders(source_for(sim.port), orders)
    assert [a.commission for a in answers] == [1.00, 5.00, 2.50]
    for order, answer in zip(orders, answers):
        value = order.shares * order.limit
        assert answer.order == order and answer.status == "PreSubmitted" and answer.currency == "USD"
        assert answer.commission == pytest.approx(float(ib_commission(order.shares, order.limit)))
        assert answer.min_commission == answer.max_commission == answer.commission
        assert set(answer.margins) == set(MARGIN_FIELDS) and None not in answer.margins.values()
        assert answer.margins["initMarginChange"] == pytest.approx(0.50 * value)
        assert answer.margins["maintMarginChange"] == pytest.approx(0.25 * value)
        assert answer.margins["equityWithLoanBefore"] == ACCOUNT_EQUITY
        assert answer.margins["equityWithLoanAfter"] == pytest.approx(ACCOUNT_EQUITY - answer.commission)
        assert answer.margins["initMarginAfter"] == pytest.approx(answer.margins["initMarginBefore"] + 0.5 * value)
    placed = sim.placed_orders
    assert [(p.symbol, p.action, p.quantity, p.order_type, p.limit_price, p.tif, p.what_if) for p in placed] == [
        ("AAA", "BUY", 100.0, "LMT", 25.0, "DAY", True), ("BBB", "SELL", 1000.0, "LMT", 25.0, "DAY", True),
        ("FFF", "BUY", 1000.0, "LMT", 0.25, "DAY", True)]


def test_place_order_fields_after_the_variable_sections_are_found():
    """An order with an algo (and its parameters), a delta-neutral order type off and scale fields still lands its
    whatIf flag where the simulator reads it: the client's own encoding decides, not a fixed offset."""

    async def ask(port: int):
        ib = ib_insync.IB()
        await ib.connectAsync("127.0.0.1", port, clientId=12, timeout=10)
        try:
            contract = ib_insync.Stock("CCC", "SMART", "USD")
            await ib.qualifyContractsAsync(contract)
            order = ib_insync.LimitOrder("BUY", 40, 125.0, algoStrategy="Adaptive",
                                         algoParams=[ib_insync.TagValue("adaptivePriority", "Normal")], hedgeType="")
            return await asyncio.wait_for(ib.whatIfOrderAsync(contract, order), 10)
        finally:
            ib.disconnect()

    with GatewaySimulator(order_bars()) as gateway:
        state = run_on_private_loop(lambda: ask(gateway.port))
        assert float(state.initMarginChange) == pytest.approx(0.5 * 40 * 125.0)
        assert state.commission == pytest.approx(1.0)  # 40 x 0.005 = 0.20: the USD 1.00 minimum
        assert gateway.placed_orders[-1].what_if is True


def test_open_order_message_decodes_field_by_field_in_ib_insync():
    """ib_insync's own decoder reads the simulator's openOrder back into the order, contract and order state."""
    seen = []

    class Capture:
        def openOrder(self, order_id, contract, order, state):  # the wrapper method the decoder calls
            seen.append((order_id, contract, order, state))

    order = PlacedOrder(order_id=42, contract=["8314", "IBM", "STK", "", "0.0", "", "", "SMART", "NYSE", "USD", "IBM", "IBM"],
                        action="SELL", quantity=300.0, order_type="LMT", limit_price=181.5, tif="DAY", account="DU1",
                        what_if=True)
    state = WhatIfState(commission=1.5, init_margin_change=27_225.0, maint_margin_change=13_612.5, equity_change=-1.5,
                        warning="simulated")
    fields = [str(f) for f in open_order_message(order, state, client_id=7, perm_id=99)]
    decoder = ib_insync.decoder.Decoder(Capture(), SERVER_VERSION)
    decoder.openOrder(fields)  # raises on a missing field (interpret() would only log it)
    (order_id, contract, decoded, got), = seen
    assert order_id == 42 and contract.conId == 8314 and contract.symbol == "IBM" and contract.currency == "USD"
    assert (decoded.action, decoded.totalQuantity, decoded.orderType, decoded.lmtPrice, decoded.tif) == (
        "SELL", 300.0, "LMT", 181.5, "DAY")
    assert decoded.whatIf is True and decoded.clientId == 7 and decoded.permId == 99 and decoded.account == "DU1"
    assert got.status == "PreSubmitted" and got.commission == 1.5 and got.commissionCurrency == "USD"
    assert (got.initMarginBefore, got.initMarginChange, got.initMarginAfter) == ("0.00", "27225.00", "27225.00")
    assert (got.maintMarginChange, got.equityWithLoanChange) == ("13612.50", "-1.50")
    assert got.equityWithLoanAfter == f"{ACCOUNT_EQUITY - 1.5:.2f}" and got.warningText == "simulated"
    assert what_if_state(order, 181.5) == WhatIfState(commission=1.5, init_margin_change=27_225.0,
                                                      maint_margin_change=13_612.5, equity_change=-1.5)


def test_a_transmitted_order_is_refused_with_an_ib_error(sim):
    errors = []

    async def place():
        ib = ib_insync.IB()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=13, timeout=10)
        try:
            ib.errorEvent += lambda req_id, code, message, _contract: errors.append((req_id, code, message))
            contract = ib_insync.Stock("AAA", "SMART", "USD")
            await ib.qualifyContractsAsync(contract)
            trade = ib.placeOrder(contract, ib_insync.LimitOrder("BUY", 10, 50.0))
            for _ in range(50):
                if trade.isDone():
                    break
                await asyncio.sleep(0.1)
            return trade
        finally:
            ib.disconnect()

    trade = run_on_private_loop(place)
    assert errors and errors[0][:2] == (trade.order.orderId, ORDER_REJECTED)
    assert "what-if orders only" in errors[0][2]
    assert trade.orderStatus.status == "Cancelled"  # the client gives the refused order up
    assert [(p.symbol, p.what_if) for p in sim.placed_orders] == [("AAA", False)]


def test_what_if_errors_name_the_gateway_or_the_symbol(sim):
    port = closed_port()
    with pytest.raises(GatewayUnavailableError, match=f"127.0.0.1:{port}: connection refused"):
        what_if_orders(source_for(port), [OrderRequest("AAA", "BUY", 1, 50.0)])
    with pytest.raises(SourceError, match="what-if BUY 5 ZZZ: .*unknown symbol"):
        what_if_orders(source_for(sim.port), [OrderRequest("ZZZ", "BUY", 5, 10.0)])
    assert what_if_orders(source_for(sim.port), []) == []
