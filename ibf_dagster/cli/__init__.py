"""The ``ibf`` command line: backfill through Dagster, SQL on the warehouse, the universe, the gateway simulator.

Each command is a thin layer in a module of its group (``data``, ``universe``, ``sims``, ``demo``, ``models``,
``portfolio``, ``services``, ``backup``): it parses its options, calls a library entry point and prints. This module is the command table
(in the order ``ibf --help`` lists them) and the console script.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from ibf_dagster.cli import backup, data, demo, models, portfolio, services, sims, universe
from ibf_dagster.cli._common import _guard_commands, _interrupt, _options, _setup_output

app = typer.Typer(help="ibf: forecasting platform for Interactive Brokers market data.", no_args_is_help=True)
universe_app = typer.Typer(help="The symbols partitioned by every per-symbol asset.", no_args_is_help=True)
app.add_typer(universe_app, name="universe")
api_key_app = typer.Typer(help="REST API keys (the service stores only their SHA-256 digests).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
stack_app = typer.Typer(help="The production topology as local processes: Postgres, MLflow server, code location, webserver, daemon, API.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
backup_app = typer.Typer(help="Back up IBF_HOME (warehouse, MLflow, Dagster instance), verify a backup, restore it.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error (otherwise one error: line)")] = False,
) -> None:
    _options["debug"] = debug


app.command()(data.backfill)
app.command()(data.sql)
universe_app.command("list")(universe.universe_list)
universe_app.command("add")(universe.universe_add)
universe_app.command("remove")(universe.universe_remove)
app.command("gateway-sim")(sims.gateway_sim)
app.command()(sims.stream)
app.command()(data.forecasts)
app.command("av-sim")(sims.av_sim)
app.command()(demo.demo)
app.command()(models.train)
app.command()(models.evaluate)
app.command()(portfolio.orders)
app.command()(services.ui)
app.command()(services.serve)
stack_app.command("up")(services.stack_up)
stack_app.command("prepare")(services.stack_prepare)
stack_app.command("down")(services.stack_down)
api_key_app.command("new")(services.api_key_new)
backup_app.command("create")(backup.backup_create)
backup_app.command("verify")(backup.backup_verify)
backup_app.command("restore")(backup.backup_restore)


def main_in_child() -> None:
    """The supervised child's entry point (ibf_dagster/supervise.py): the command line, run in this process."""
    main(supervise=False)


def main(supervise: bool = True) -> None:
    """The console script: every failure is one ``error:`` line and exit 1 (2 for settings), 130 when interrupted;
    ``train`` and ``backfill`` run in a supervised child (``supervise=False`` there)."""
    _options["supervise"] = supervise
    signal.signal(signal.SIGTERM, _interrupt)
    _setup_output()
    _guard_commands(app)
    app()

