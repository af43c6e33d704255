"""Portfolio commands: ``orders`` (the next session's trades of a configured portfolio, its IB basket file and,
with ``--whatif``, IB's commission and margin answer per order)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ibf_core.portfolio.spec import Strategy
from ibf_dagster.cli._common import _fail, _quiet_dagster, _settings, err, out

wide = Console(width=240)  # tables as wide as their contents: no column cut to a terminal's 80 characters
# Heavy imports wait until a command runs: `ibf --help` must not load pandas or ib_insync.


def orders(
    portfolio: Annotated[str, typer.Option("--portfolio", "-p", help="A portfolio of IBF_PORTFOLIOS")],
    capital: Annotated[float | None, typer.Option(help="USD to size the orders for (default: IBF_PORTFOLIO_CAPITAL)")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table or csv (the trades on stdout)")] = "table",
    basket: Annotated[Path | None, typer.Option(help="Where to write the TWS BasketTrader CSV (default: ./<portfolio>-<origin>-basket.csv)")] = None,
    whatif: Annotated[bool, typer.Option("--whatif", help="Ask IB (IBF_IB_HOST / IBF_IB_PORTS) for each order's commission and margin as a what-if order: never transmitted")] = False,
) -> None:
    """The trades that move a portfolio to the next session's targets (newest predictions) and its IB basket CSV.

    Nothing is ever transmitted: the basket is a file to review and import in TWS BasketTrader, and --whatif sends what-if orders only (IB answers with commission and margin; no order is placed). Sending real orders is out of scope.
    """
    from ibf_core.portfolio.orders import OrdersError, basket_csv, plan_orders
    from ibf_core.storage.backends import open_warehouse

    if format not in ("table", "csv"):
        _fail(f"--format {format!r}: must be table or csv", 2)
    settings = _settings()
    if portfolio not in settings.portfolios:
        _fail(f"unknown portfolio {portfolio!r} (configured in IBF_PORTFOLIOS: {', '.join(sorted(settings.portfolios))})", 2)
    money = settings.portfolio_capital if capital is None else capital
    if not money > 0 or money == float("inf"):
        _fail(f"--capital {capital!r}: must be a positive amount of USD", 2)
    spec = Strategy.parse(settings.portfolios[portfolio], portfolio)
    store = open_warehouse(settings, reader=True)
    if not store.exists():
        _fail(f"no predictions exist: there is no warehouse under {settings.home}; run the daily job (or `ibf demo`) first")
    try:
        plan = plan_orders(store, portfolio, spec, money)
    except OrdersError as exc:
        _fail(str(exc))
    notes = err if format == "csv" else out
    notes.print(
        f"portfolio {portfolio} ({spec.strategy}, horizon {spec.horizon}): targets of origin {plan.origin} for the "
        f"session {plan.session}; capital USD {money:,.0f}; starting from {plan.holdings.source}; limit reference "
        f"= the latest close ({plan.price_date or 'no bars'})", highlight=False, soft_wrap=True)
    _print_trades(plan, format)
    path = basket or Path(f"{plan.basket_tag.removeprefix('ibf-')}-basket.csv")
    try:
        path.write_text(basket_csv(plan.trades, plan.basket_tag))
    except OSError as exc:
        _fail(f"--basket {str(path)!r}: cannot write it ({exc.strerror or exc})")
    totals = plan.totals()
    notes.print(f"{len(plan.trades)} orders: buy USD {totals['bought']:,.2f}, sell USD {totals['sold']:,.2f}; "
                f"wrote the basket {path}", highlight=False, soft_wrap=True)
    if whatif:
        _what_if(settings, plan, format)


def _print_trades(plan, format: str) -> None:
    rows = [(t.symbol, t.side, t.shares, f"{t.price:.2f}", f"{t.value:.2f}", t.current_shares, t.target_shares,
             f"{t.current_weight:.4f}", f"{t.target_weight:.4f}") for t in plan.trades]
    header = ("symbol", "side", "shares", "price", "value", "current_shares", "target_shares", "current_weight",
              "target_weight")
    if format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([header, *rows])
        return
    if not rows:  # an empty table would read like a failure
        out.print("no trades: the holdings already match the targets at whole shares", highlight=False)
        return
    table = Table(show_lines=False)
    for column in header:
        table.add_column(column, justify="left" if column in ("symbol", "side") else "right")
    for row in rows:
        table.add_row(*map(str, row))
    wide.print(table)


def _what_if(settings, plan, format: str) -> None:
    """Each trade as an IB what-if order; IB's commission and margin change per order and in total."""
    from ibf_core.sources.ibkr.source import IbkrSource
    from ibf_core.sources.ibkr.whatif import OrderRequest, what_if_orders

    _quiet_dagster()  # ib_insync's own connection log lines would repeat the one error line
    requests = [OrderRequest(t.symbol, t.side, t.shares, round(t.price, 2 if t.price >= 1 else 4)) for t in plan.trades]
    answers = what_if_orders(IbkrSource.from_settings(settings), requests)
    header = ("symbol", "side", "shares", "status", "commission", "currency", "init_margin_change",
              "maint_margin_change", "equity_with_loan_change", "warning")

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    rows = [(a.order.symbol, a.order.side, a.order.shares, a.status, number(a.commission), a.currency,
             number(a.margins["initMarginChange"]), number(a.margins["maintMarginChange"]),
             number(a.margins["equityWithLoanChange"]), a.warning) for a in answers]
    total = {k: sum(v for v in (pick(a) for a in answers) if v is not None) for k, pick in {
        "commission": lambda a: a.commission,
        "init": lambda a: a.margins["initMarginChange"],
        "maint": lambda a: a.margins["maintMarginChange"],
    }.items()}
    if format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([header, *rows])
    else:
        out.print("IB's what-if answers (nothing transmitted):", highlight=False)
        table = Table(show_lines=False)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*map(str, row))
        wide.print(table)
    (err if format == "csv" else out).print(
        f"what-if total over {len(answers)} orders: commission USD {total['commission']:.2f}, initial margin change "
        f"USD {total['init']:,.2f}, maintenance margin change USD {total['maint']:,.2f}", highlight=False, soft_wrap=True)
