"""``ibf orders``: the next session's trades, the basket file, what-if answers from the gateway simulator, and the
one-line errors (unknown portfolio, no predictions, unreachable gateway), each leaving the warehouse unchanged."""

import csv
import io
import json
import socket

import pandas as pd
import pytest
from helpers.cli import lake_state, run_ibf
from helpers.portfolio import order_bars, store_order_world

from ibf_core.portfolio.stored import PORTFOLIO_WEIGHTS
from ibf_core.settings import load_settings
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.interface import to_arrow

PORTFOLIOS = json.dumps({"top": {"strategy": "topk", "k": 2}, "ls": {"strategy": "long_short", "k": 1}})


@pytest.fixture
def world(ibf_home, monkeypatch, tmp_path):
    monkeypatch.setenv("IBF_PORTFOLIOS", PORTFOLIOS)
    monkeypatch.chdir(tmp_path)
    store = open_warehouse(load_settings())
    store.ensure_all_tables()
    store_order_world(store)
    return ibf_home


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_orders_table_from_cash_and_the_default_basket_file(world, tmp_path):
    proc = run_ibf("orders", "--portfolio", "top", "--capital", "50000")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "targets of origin 2024-05-01 for the session 2024-05-02" in text
    assert "starting from cash (no portfolio_weights rows for portfolio 'top')" in text
    assert "capital USD 50,000" in text
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in text.splitlines() if "│" in line]
    trades = [row[:4] for row in cells if len(row) > 4 and row[1] in ("BUY", "SELL")]
    assert trades == [["AAA", "BUY", "500", "50.00"], ["EEE", "BUY", "83", "300.00"]]  # 25,000 / 50 and / 300
    basket = tmp_path / "top-20240501-basket.csv"
    rows = list(csv.reader(io.StringIO(basket.read_text())))
    assert rows == [
        ["Action", "Quantity", "Symbol", "SecType", "Exchange", "Currency", "TimeInForce", "OrderType", "LmtPrice", "BasketTag"],
        ["BUY", "500", "AAA", "STK", "SMART", "USD", "DAY", "LMT", "50.00", "ibf-top-20240501"],
        ["BUY", "83", "EEE", "STK", "SMART", "USD", "DAY", "LMT", "300.00", "ibf-top-20240501"],  # 25,000 / 300
    ]
    assert "2 orders: buy USD 49,900.00, sell USD 0.00" in text


def test_orders_csv_on_stdout_and_a_chosen_basket_path(world, tmp_path):
    target = tmp_path / "out" / "basket.csv"
    target.parent.mkdir()
    proc = run_ibf("orders", "-p", "ls", "--format", "csv", "--basket", str(target))  # IBF_PORTFOLIO_CAPITAL: 100,000
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))  # stdout holds the CSV only; the notes go to stderr
    got = [(r["symbol"], r["side"], r["shares"], r["price"], r["target_weight"]) for r in rows]
    # long_short k=1: +1 on the best (EEE), -1 on the worst (BBB): 100,000 / 300 = 333 bought, 100,000 / 20 sold short
    assert got == [("BBB", "SELL", "5000", "20.00", "-1.0000"), ("EEE", "BUY", "333", "300.00", "1.0000")]
    assert "starting from cash" in proc.stderr and target.read_text().splitlines()[1].startswith("SELL,5000,BBB,")


def test_orders_when_the_paper_portfolio_already_holds_the_targets_says_no_trades(world):
    held = pd.DataFrame({"portfolio": "top", "date": pd.Timestamp("2024-05-01"), "symbol": ["AAA", "EEE"],
                         "weight": 0.5, "origin": pd.Timestamp("2024-05-01"), "target_weight": 0.5, "reason": "hold"})
    store = open_warehouse(load_settings())
    table = to_arrow(PORTFOLIO_WEIGHTS, held)
    store.write([(PORTFOLIO_WEIGHTS, "top")], lambda tx: tx.put(PORTFOLIO_WEIGHTS, "top", table))
    proc = run_ibf("orders", "-p", "top")  # the targets of 2024-05-01 are AAA and EEE at 0.5 each
    assert proc.returncode == 0, proc.stderr
    assert "starting from paper portfolio weights of 2024-05-01" in proc.stdout
    assert "no trades: the holdings already match the targets at whole shares" in proc.stdout
    assert "0 orders: buy USD 0.00, sell USD 0.00" in proc.stdout


def test_orders_whatif_prints_ib_commission_and_margin_per_order_and_in_total(world):
    with GatewaySimulator(order_bars()) as sim:
        proc = run_ibf("orders", "-p", "top", "--whatif", "--format", "csv",
                       env={"IBF_IB_PORTS": str(sim.port), "IBF_IB_CLIENT_ID": "21"})
        placed = sim.placed_orders
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("symbol,side,shares,status"))
    answers = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    assert len(answers) == 2
    by_symbol = {a["symbol"]: a for a in answers}
    # 1000 AAA at 50: 5.00 commission, 25,000 initial / 12,500 maintenance; 166 EEE at 300: 1.00 (minimum)
    assert (by_symbol["AAA"]["commission"], by_symbol["AAA"]["init_margin_change"], by_symbol["AAA"]["maint_margin_change"]) == (
        "5.00", "25000.00", "12500.00")
    assert (by_symbol["EEE"]["shares"], by_symbol["EEE"]["commission"], by_symbol["EEE"]["status"]) == ("166", "1.00", "PreSubmitted")
    assert "what-if total over 2 orders: commission USD 6.00, initial margin change USD 49,900.00" in proc.stderr
    assert [(p.symbol, p.action, p.quantity, p.limit_price, p.what_if) for p in placed] == [
        ("AAA", "BUY", 1000.0, 50.0, True), ("EEE", "BUY", 166.0, 300.0, True)]  # nothing without whatIf was sent


def _one_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_orders_errors_are_one_line_and_leave_the_warehouse_unchanged(world):
    before = lake_state(world)
    line = _one_error(run_ibf("orders", "--portfolio", "nope"))
    assert "unknown portfolio 'nope'" in line and "ls, top" in line
    port = closed_port()
    line = _one_error(run_ibf("orders", "-p", "top", "--whatif", env={"IBF_IB_PORTS": str(port)}))
    assert f"127.0.0.1:{port}" in line and "connection refused" in line
    line = _one_error(run_ibf("orders", "-p", "top", "--format", "json"))
    assert "--format 'json'" in line
    assert lake_state(world) == before


def test_orders_without_predictions_says_none_exist(ibf_home, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    line = _one_error(run_ibf("orders", "-p", "topk"))  # the default portfolio; no warehouse at all
    assert "no predictions exist" in line and "ibf demo" in line
    open_warehouse(load_settings()).ensure_all_tables()  # a warehouse with empty tables
    line = _one_error(run_ibf("orders", "-p", "topk"))
    assert "no predictions exist in the warehouse" in line and "ibf demo" in line
    assert not list(tmp_path.glob("*.csv"))  # no basket written
