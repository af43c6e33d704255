"""Next-session orders: whole-share arithmetic, trades from cash and from the paper weights, the IB basket file,
and the plan read from a real warehouse (with and without a ``portfolio_weights`` table)."""

import csv
import datetime as dt
import io

import pandas as pd
import pytest
from helpers.portfolio import ORDER_ORIGIN, ORDER_PRICES, store_order_world

from ibf_core.portfolio.orders import (
    BASKET_COLUMNS,
    OrdersError,
    Trade,
    basket_csv,
    current_holdings,
    plan_orders,
    share_count,
    trade_list,
)
from ibf_core.portfolio.spec import Strategy
from ibf_core.portfolio.stored import PORTFOLIO_WEIGHTS
from ibf_core.storage.interface import to_arrow
from ibf_core.storage.warehouse import Warehouse

PRICES = pd.Series({"AAA": 50.0, "BBB": 20.0, "CCC": 3.0, "SHO": 30.0, "PEN": 0.8})


def test_share_count_rounds_down_towards_zero_and_keeps_the_sign():
    assert share_count(0.5, 100_000, 300.0) == 166  # 166.67
    assert share_count(0.3, 1_000, 3.0) == 100  # 0.3 x 1000 / 3 is 99.999... in floating point
    assert share_count(-0.25, 10_000, 30.0) == -83  # a short: 83.3 shares, rounded towards zero
    assert share_count(0.001, 1_000, 50.0) == 0  # USD 1 buys no share of a USD 50 stock
    with pytest.raises(OrdersError, match="price"):
        share_count(0.5, 1_000, 0.0)


def test_trades_from_cash_buy_the_whole_shares_of_each_target():
    trades = trade_list(pd.Series({"AAA": 0.5, "CCC": 0.5}), pd.Series(dtype=float), PRICES, 10_000.0)
    assert [(t.symbol, t.side, t.shares, t.price) for t in trades] == [("AAA", "BUY", 100, 50.0), ("CCC", "BUY", 1666, 3.0)]
    assert trades[1].value == pytest.approx(4998.0) and trades[1].current_shares == 0 and trades[1].target_shares == 1666


def test_trades_from_current_weights_sell_first_and_trade_only_the_difference():
    current = pd.Series({"AAA": 0.3, "BBB": 0.5, "CCC": 0.2})
    targets = pd.Series({"AAA": 0.5, "CCC": 0.2, "SHO": -0.25})
    trades = trade_list(targets, current, PRICES, 10_000.0)
    got = [(t.symbol, t.side, t.shares, t.current_shares, t.target_shares) for t in trades]
    # BBB: 250 held -> 0; SHO: short 83 (rounded towards zero); AAA: 60 -> 100; CCC unchanged (666 both): no trade
    assert got == [("BBB", "SELL", 250, 250, 0), ("SHO", "SELL", 83, 0, -83), ("AAA", "BUY", 40, 60, 100)]
    covered = trade_list(pd.Series(dtype=float), pd.Series({"SHO": -0.25}), PRICES, 10_000.0)
    assert [(t.symbol, t.side, t.shares) for t in covered] == [("SHO", "BUY", 83)]  # closing a short buys it back


def test_a_symbol_without_a_price_is_one_error_naming_it():
    with pytest.raises(OrdersError, match="ZZZ"):
        trade_list(pd.Series({"AAA": 0.5, "ZZZ": 0.5}), pd.Series(dtype=float), PRICES, 10_000.0)
    with pytest.raises(OrdersError, match="capital"):
        trade_list(pd.Series({"AAA": 1.0}), pd.Series(dtype=float), PRICES, 0.0)


def test_basket_csv_has_the_basket_trader_columns_and_one_limit_order_per_trade():
    trades = [Trade("BBB", "SELL", 250, 20.0, 250, 0, 0.5, 0.0), Trade("PEN", "BUY", 1250, 0.8, 0, 1250, 0.0, 0.1)]
    rows = list(csv.reader(io.StringIO(basket_csv(trades, "ibf-top-20240501"))))
    assert tuple(rows[0]) == BASKET_COLUMNS == ("Action", "Quantity", "Symbol", "SecType", "Exchange", "Currency",
                                                 "TimeInForce", "OrderType", "LmtPrice", "BasketTag")
    assert rows[1:] == [
        ["SELL", "250", "BBB", "STK", "SMART", "USD", "DAY", "LMT", "20.00", "ibf-top-20240501"],
        ["BUY", "1250", "PEN", "STK", "SMART", "USD", "DAY", "LMT", "0.8000", "ibf-top-20240501"],  # sub-dollar tick
    ]
    assert basket_csv([], "x").splitlines() == [",".join(BASKET_COLUMNS)]


@pytest.fixture
def store(tmp_path):
    warehouse = Warehouse(tmp_path / "home")
    warehouse.ensure_all_tables()
    return warehouse


def test_no_predictions_is_an_error_saying_so(store):
    with pytest.raises(OrdersError, match="no predictions exist"):
        plan_orders(store, "top", Strategy.parse({"strategy": "topk", "k": 2}), 100_000.0)
    store_order_world(store)
    with pytest.raises(OrdersError, match=r"no predictions for horizon 5 .*stored horizons: 1"):
        plan_orders(store, "top", Strategy.parse({"strategy": "topk", "k": 2, "horizon": 5}), 100_000.0)


def test_plan_from_cash_uses_the_newest_origin_and_says_it_starts_from_cash(store):
    store_order_world(store)
    plan = plan_orders(store, "top", Strategy.parse({"strategy": "topk", "k": 2}), 100_000.0)
    assert plan.origin == dt.date(2024, 5, 1) and plan.session == dt.date(2024, 5, 2)
    assert plan.price_date == dt.date(2024, 5, 1)
    assert plan.holdings.weights.empty and "no portfolio_weights rows" in plan.holdings.source
    assert plan.targets.to_dict() == {"AAA": 0.5, "EEE": 0.5}  # the two best scores of 2024-05-01 (not 04-30's)
    assert [(t.symbol, t.side, t.shares, t.price) for t in plan.trades] == [("AAA", "BUY", 1000, 50.0), ("EEE", "BUY", 166, 300.0)]
    assert plan.basket_tag == "ibf-top-20240501"
    assert plan.totals() == {"bought": 99_800.0, "sold": 0.0, "net": 99_800.0}


def _store_weights(store, rows: list[tuple[str, str, str, float]]) -> None:
    frame = pd.DataFrame(rows, columns=["portfolio", "date", "symbol", "weight"])
    frame = frame.assign(date=pd.to_datetime(frame["date"]), origin=pd.to_datetime(frame["date"]),
                         target_weight=frame["weight"], reason="rebalance")
    for name, rows_of in frame.groupby("portfolio"):  # one file per portfolio, as the portfolio assets write it
        table = to_arrow(PORTFOLIO_WEIGHTS, rows_of)
        store.write([(PORTFOLIO_WEIGHTS, name)], lambda tx, name=name, table=table: tx.put(PORTFOLIO_WEIGHTS, name, table))


def test_plan_from_the_paper_portfolio_reads_its_newest_weights_only(store):
    store_order_world(store)
    assert "no portfolio_weights rows for portfolio 'drop'" in current_holdings(store, "drop").source
    _store_weights(store, [
        ("drop", "2024-04-29", "CCC", 1.0),  # an older day of the same portfolio: not the holdings
        ("drop", "2024-04-30", "AAA", 0.3), ("drop", "2024-04-30", "BBB", 0.5),
        ("other", "2024-05-01", "DDD", 1.0),  # another portfolio, newer: not this one's
    ])  # fmt: skip
    holdings = current_holdings(store, "drop")
    assert holdings.weights.to_dict() == {"AAA": 0.3, "BBB": 0.5} and holdings.date == dt.date(2024, 4, 30)
    assert holdings.source == "paper portfolio weights of 2024-04-30"
    # TopkDropout (k 2, n_drop 1) given those weights: BBB (worst held) is sold, AAA keeps 0.3, EEE gets the 0.7 left.
    spec = Strategy.parse({"strategy": "topk_dropout", "k": 2, "n_drop": 1})
    plan = plan_orders(store, "drop", spec, 100_000.0)
    assert plan.targets.round(12).to_dict() == {"AAA": 0.3, "EEE": 0.7}
    got = [(t.symbol, t.side, t.shares, t.current_shares, t.target_shares) for t in plan.trades]
    assert got == [("BBB", "SELL", 2500, 2500, 0), ("EEE", "BUY", 233, 0, 233)]  # AAA: 600 shares either way
    assert plan.prices.to_dict() == ORDER_PRICES and plan.origin.isoformat() == ORDER_ORIGIN


def test_plan_gives_the_strategy_the_liquidity_and_sector_columns_it_needs(store):
    store_order_world(store)
    # Dollar volume = close x 100,000 shares: DDD (USD 0.75M) and FFF (USD 0.08M) are below USD 1M and never bought,
    # though DDD outscores BBB. No fundamentals stored: every symbol is in the one "unknown" sector.
    spec = Strategy.parse({"strategy": "topk", "k": 4, "min_dollar_volume": 1_000_000, "sector_neutral": True})
    plan = plan_orders(store, "liquid", spec, 100_000.0)
    assert sorted(plan.targets.index) == ["AAA", "BBB", "CCC", "EEE"]
    assert [(t.symbol, t.shares) for t in plan.trades] == [("AAA", 500), ("BBB", 1250), ("CCC", 200), ("EEE", 83)]
