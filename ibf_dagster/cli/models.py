"""Model commands: ``train`` (one cut-off through Dagster) and ``evaluate`` (the walk-forward of
:mod:`ibf_core.evaluation.pipeline`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ibf_core.models import ModelDataError
from ibf_core.models.config import ModelConfig, resolve_device
from ibf_dagster.cli._common import (
    _fail,
    _quiet_dagster,
    _settings,
    _supervised,
    err,
    out,
)

# Heavy imports wait until a command runs: `ibf --help` must not load pandas, dagster, mlflow or the model members.


def train(
    cutoff: Annotated[str | None, typer.Option(help="Training cut-off session (default: the newest stored session but one)")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Dagster's logs")] = False,
) -> None:
    """Materialize trained_models for one cut-off through Dagster (MLflow run + registry version)."""
    _supervised("train")
    from ibf_dagster.runner import BackfillError
    from ibf_dagster.runner import train as run_train

    log_level = _quiet_dagster(verbose)
    settings = _settings()
    day = cutoff or _default_cutoff(settings)
    started = time.perf_counter()
    try:
        summary = run_train(settings, day, log_level=log_level)
    except BackfillError as exc:
        _fail(str(exc))
    if not summary.success:
        _fail(f"training for cut-off {day} failed: {summary.error} (run {summary.run_id}; details in the Dagster UI)")
    out.print(f"trained_models {day}: run {summary.run_id} in {time.perf_counter() - started:.1f} s", highlight=False)
    _print_validation(settings, day)


def _default_cutoff(settings) -> str:
    import pandas as pd

    from ibf_core.storage.backends import open_warehouse

    dates = open_warehouse(settings).query("SELECT DISTINCT date FROM features ORDER BY date DESC LIMIT 2")
    if len(dates) < 2:
        _fail("no features stored: run ibf backfill (or make demo) first")
    return str(pd.Timestamp(dates["date"].iloc[1]).date())


def _print_validation(settings, cutoff: str) -> None:
    """The registered version's validation summary: skill versus the random walk, per horizon."""
    import pandas as pd

    from ibf_core.models.registry import list_versions, load_registered

    version = [v for v in list_versions(settings.mlflow_uri, settings.model_name) if v.cutoff.isoformat() == cutoff][-1]
    bundle = load_registered(settings.mlflow_uri, version, settings.model_cache_dir)
    table = pd.DataFrame(bundle.validation)
    table = table[table["member"] != "naive"]
    shown = table.pivot(index="horizon", columns="member", values="rel_mae_vs_naive").round(3)
    out.print(
        f"model {version.name} v{version.version} (cut-off {cutoff}, {bundle.facts['device']}); validation "
        f"{bundle.validation_start}..{bundle.validation_end}, MAE relative to the random walk (< 1 beats it):",
        highlight=False,
    )
    out.print(shown.to_string(), highlight=False)


def evaluate(
    horizons: Annotated[str, typer.Option(help="Comma list of horizons in sessions")] = "1,5,20",
    test_days: Annotated[int, typer.Option(help="Test origins (the newest sessions with realized targets)")] = 60,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON")] = Path("evaluation.json"),
    report: Annotated[Path | None, typer.Option(help="Markdown report path (default: next to --json)")] = None,
    source: Annotated[str | None, typer.Option(help="sample, csv or ibkr (default: IBF_SOURCE)")] = None,
    csv: Annotated[str | None, typer.Option(help="CSV/Parquet file or folder (implies --source csv)")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma list (default: IBF_UNIVERSE; with --source csv: the file's symbols)")] = None,
    start: Annotated[str | None, typer.Option(help="First bar date to load (default: IBF_HISTORY_START)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Neural training steps (default: IBF_MODEL_MAX_STEPS)")] = None,
    members: Annotated[str | None, typer.Option(help="Trained members, e.g. gbdt or lstm,tft,gbdt")] = None,
    refit_every: Annotated[int | None, typer.Option(help="Sessions per fold before refitting (default: --test-days)")] = None,
    policy_backtest: Annotated[bool, typer.Option(help="Also backtest drift-triggered vs fixed-cadence vs no retraining")] = False,
    policy_start: Annotated[str | None, typer.Option(help="First session of the policy backtest (default: 2 years before the data ends)")] = None,
    policy_members: Annotated[str, typer.Option(help="Members trained in the policy backtest (every retrain trains them)")] = "gbdt",
    policy_cadence: Annotated[int, typer.Option(help="Sessions between retrains of the fixed-cadence policy")] = 63,
    portfolio: Annotated[list[str] | None, typer.Option(help="Portfolio of IBF_PORTFOLIOS to backtest on every forecaster and factor, repeatable, or 'all' (default: the first configured)")] = None,
) -> None:
    """Walk-forward evaluation of every member against the random walk; writes JSON and a markdown report."""
    from ibf_core.calendar import to_date
    from ibf_core.evaluation.pipeline import PolicyBacktest, run_evaluation
    from ibf_core.evaluation.portfolios import choose_portfolios
    from ibf_core.sources.errors import SourceError

    _quiet_dagster()
    if csv is not None and source is None:
        source = "csv"  # as in backfill: a file given means the file is read, never the sample instead
    settings = _settings(source=source, csv_path=csv, universe=symbols, model_members=members)
    try:
        wanted = tuple(sorted({int(h) for h in horizons.split(",") if h.strip()}))
        config = ModelConfig.from_settings(settings, horizons=wanted, **({"max_steps": max_steps} if max_steps else {}))
        device = resolve_device(settings.accelerator)
        portfolios = choose_portfolios(settings.portfolios, portfolio, config.horizons)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc), 2)
    first = to_date(start) if start else None
    policy = PolicyBacktest(policy_start, tuple(policy_members.split(",")), policy_cadence) if policy_backtest else None
    try:
        # --csv without --symbols: every symbol in the file (the default universe would be "unknown symbol")
        evaluation = run_evaluation(
            settings, config, settings.universe if symbols else None, first, test_days, refit_every, device, policy,
            progress=lambda message: err.print(message, highlight=False), portfolios=portfolios,
        )
    except (SourceError, ModelDataError, ValueError) as exc:
        _fail(str(exc))
    json_path, report_path = evaluation.write(json_out, report)
    for line in evaluation.summary_lines():
        out.print(line, highlight=False)
    out.print(f"wrote {json_path} and {report_path}", highlight=False)
