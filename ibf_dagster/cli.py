"""The ``ibf`` command line: backfill through Dagster, SQL on the warehouse, the universe, the gateway simulator."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ibf_core.settings import SettingsError, get_settings, load_settings, normalize_symbol

app = typer.Typer(help="ibf: forecasting platform for Interactive Brokers market data.", no_args_is_help=True)
universe_app = typer.Typer(help="The symbols partitioned by every per-symbol asset.", no_args_is_help=True)
app.add_typer(universe_app, name="universe")
api_key_app = typer.Typer(help="REST API keys (the service stores only their SHA-256 digests).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
err = Console(stderr=True)
out = Console(soft_wrap=True)  # tables are wider than 80 columns; never re-wrap them


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides):
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None}) if overrides else get_settings()
    except SettingsError as exc:
        _fail(str(exc), 2)


def _split(value: str | None) -> list[str] | None:
    return [s for s in (p.strip() for p in value.split(",")) if s] if value else None


def _quiet_dagster(verbose: bool = False) -> str:
    """Keep the terminal to ibf's own summary; the full logs and traces stay in the Dagster instance (UI)."""
    import logging

    warnings.filterwarnings("ignore")
    if not verbose:
        logging.getLogger("ib_insync").setLevel(logging.CRITICAL)
    return "INFO" if verbose else "CRITICAL"


def run_backfill(settings, symbols, start, end, assets, source, csv, log_level="CRITICAL") -> list:
    """Run the backfill with a progress bar fed by ibf_core's progress sink; exits non-zero on failure."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ibf_core.progress import set_progress_sink
    from ibf_dagster.runner import BackfillError, backfill

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("planning", total=None)

        def sink(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        set_progress_sink(sink)
        try:
            summaries = backfill(settings, symbols, start, end, assets, source, csv, log_level)
        except BackfillError as exc:
            _fail(str(exc))
        finally:
            set_progress_sink(None)
    failed = [s for s in summaries if not s.success]
    for summary in summaries:
        checks = ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in summary.checks.items())
        status = "ok" if summary.success else "FAILED"
        err.print(
            f"run {summary.run_id[:8]} {status}: {len(summary.symbols)} symbols, "
            f"{summary.date_keys[0]}..{summary.date_keys[1]}, {summary.row_count} rows; {checks}",
            highlight=False,
        )
    if failed:
        _fail("; ".join(s.error or "run failed" for s in failed))
    return summaries


@app.command()
def backfill(
    symbols: Annotated[str | None, typer.Option(help="Comma list; default: the whole universe")] = None,
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD); default: IBF_HISTORY_START")] = None,
    end: Annotated[str | None, typer.Option(help="Last date; default: the newest partition")] = None,
    assets: Annotated[str, typer.Option(help="Dagster asset selection: market_bars, 'market_bars*', '*'")] = "*",
    source: Annotated[str | None, typer.Option(help="Override IBF_SOURCE: sample, csv, ibkr")] = None,
    csv: Annotated[Path | None, typer.Option(help="CSV/Parquet file or folder (implies --source csv)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Dagster's and ib_insync's logs")] = False,
) -> None:
    """Materialize assets for symbols x dates through Dagster (runs show in the UI)."""
    log_level = _quiet_dagster(verbose)
    if csv is not None and source is None:
        source = "csv"
    settings = _settings(source=source, csv_path=csv)
    if csv is not None and not csv.exists():
        _fail(f"{csv}: no such file or folder")
    started = time.perf_counter()
    run_backfill(settings, _split(symbols), start, end, assets, source, str(csv) if csv else None, log_level)
    err.print(f"done in {time.perf_counter() - started:.1f} s", highlight=False)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run (read-only), e.g. \"SELECT * FROM market_bars LIMIT 5\"")],
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
) -> None:
    """Run read-only SQL on the DuckDB warehouse (safe while runs write)."""
    import duckdb

    from ibf_core.storage.warehouse import Warehouse

    if format not in ("table", "csv", "json"):
        _fail("--format must be table, csv or json", 2)
    try:
        frame = Warehouse(_settings().home_dir).query(query)
    except duckdb.Error as exc:
        _fail(str(exc).splitlines()[0])
    for column in frame.columns:
        values = frame[column]
        if str(values.dtype).startswith("datetime64") and (values.dropna().dt.normalize() == values.dropna()).all():
            frame[column] = values.dt.date  # DuckDB DATE columns arrive as midnight timestamps
    if format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif format == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        from rich.table import Table

        table = Table(show_lines=False)
        for column in frame.columns:
            table.add_column(str(column))
        for row in frame.itertuples(index=False):
            table.add_row(*["" if v is None else str(v) for v in row])
        out.print(table)
        err.print(f"{len(frame)} rows", highlight=False)


@universe_app.command("list")
def universe_list() -> None:
    """Symbols that are partitions (* = also in IBF_UNIVERSE)."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    for symbol in known_symbols(get_instance(settings)):
        out.print(f"{symbol}{' *' if symbol in settings.universe else ''}", highlight=False)


@universe_app.command("add")
def universe_add(symbols: Annotated[list[str], typer.Argument(help="Symbols to add")]) -> None:
    """Add symbols to the ``symbol`` partitions."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import sync_universe

    try:
        wanted = [normalize_symbol(s) for s in symbols]
    except ValueError as exc:
        _fail(str(exc), 2)
    added = sync_universe(get_instance(_settings()), wanted)
    out.print(f"added: {', '.join(added) or 'nothing (already present)'}", highlight=False)


@universe_app.command("remove")
def universe_remove(symbols: Annotated[list[str], typer.Argument(help="Symbols to remove")]) -> None:
    """Remove symbols from the ``symbol`` partitions (warehouse rows stay until you delete them)."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.partitions import SYMBOL_PARTITIONS
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    instance = get_instance(settings)
    known = set(known_symbols(instance))
    for raw in symbols:
        symbol = raw.strip().upper()
        if symbol not in known:
            _fail(f"{symbol} is not in the universe", 2)
        instance.delete_dynamic_partition(SYMBOL_PARTITIONS.name, symbol)
        note = " (still in IBF_UNIVERSE: the universe_sync sensor will add it back)" if symbol in settings.universe else ""
        out.print(f"removed {symbol}{note}", highlight=False)


@app.command("gateway-sim")
def gateway_sim(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (IB Gateway paper: 4002)")] = 4002,
    source: Annotated[str, typer.Option(help="Bars to serve: sample or csv")] = "sample",
    csv: Annotated[Path | None, typer.Option(help="CSV/Parquet bars to serve (with --source csv)")] = None,
    fault: Annotated[list[str] | None, typer.Option(help="Fault to inject, repeatable (see docs)")] = None,
) -> None:
    """Serve bars over the IB API wire protocol on loopback, so the ibkr source runs without an IB account."""
    from ibf_core.gateway_sim import parse_faults, serve
    from ibf_core.sources import make_source

    settings = _settings(source=source, csv_path=csv)
    try:
        faults = parse_faults(fault or [])
    except ValueError as exc:
        _fail(str(exc), 2)
    serve(host, port, make_source(settings), faults, announce=lambda line: err.print(f"{line} [{source} bars]", highlight=False, markup=False))


@app.command("av-sim")
def av_sim(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8765,
    articles: Annotated[Path | None, typer.Option(help="JSON file of AV articles; default: a synthetic feed")] = None,
    fault: Annotated[list[str] | None, typer.Option(help="Fault to inject, repeatable, e.g. rate_limit_after=3")] = None,
) -> None:
    """Serve the Alpha Vantage NEWS_SENTIMENT API on loopback (set IBF_ALPHAVANTAGE_URL to its address)."""
    from ibf_core.news.av_sim import load_articles, parse_faults, serve

    try:
        faults = parse_faults(fault or [])
        feed = load_articles(str(articles)) if articles else None
    except (ValueError, OSError) as exc:
        _fail(str(exc), 2)
    serve(host, port, feed, faults, announce=lambda line: err.print(line, highlight=False, markup=False))


@app.command()
def demo() -> None:
    """Sample universe end to end through Dagster: bars, news, features, trained models, ranked forecasts, drift."""
    from ibf_core.sources.sample import SAMPLE_LAST_DATE

    _quiet_dagster()
    settings = _settings(source="sample")
    started = time.perf_counter()
    # the sample ends 2013-03-01: later partitions would only hold empty slices
    run_backfill(settings, None, None, SAMPLE_LAST_DATE.isoformat(), "*", "sample", None)
    elapsed = time.perf_counter() - started
    from ibf_core.storage.warehouse import Warehouse

    summary = Warehouse(settings.home_dir).query(
        "SELECT symbol, count(*) AS bars, min(date) AS first, max(date) AS last, "
        "round(100 * (arg_max(adj_close, date) / arg_min(adj_close, date) - 1), 1) AS total_return_pct "
        "FROM market_bars GROUP BY symbol ORDER BY symbol"
    )
    out.print(summary.to_string(index=False), highlight=False)
    features = Warehouse(settings.home_dir).query(
        "SELECT symbol, count(*) AS feature_rows, sum(CAST(warmup AS INT)) AS warmup_rows, "
        "round(arg_max(rsi_14, date), 1) AS last_rsi_14, round(arg_max(hv_20, date), 3) AS last_hv_20, "
        "round(arg_max(beta_60, date), 2) AS last_beta_60 FROM features GROUP BY symbol ORDER BY symbol"
    )
    from ibf_core.features.pipeline import feature_columns

    out.print(f"\nfeatures ({len(feature_columns())} per row; news: {settings.news_source}):", highlight=False)
    out.print(features.to_string(index=False), highlight=False)
    out.print(f"\nwarehouse: {settings.warehouse_path}\ndata loaded in {elapsed:.1f} s", highlight=False)

    # Train on everything but the last session, then forecast from the last one (the sample's "today").
    from ibf_dagster.runner import BackfillError, train as run_train

    cutoff = _default_cutoff(settings)
    err.print(f"training {', '.join(settings.model_members)} up to {cutoff} (IBF_MODEL_MAX_STEPS={settings.model_max_steps})", highlight=False)
    trained = time.perf_counter()
    summary = run_train(settings, cutoff)
    if not summary.success:
        _fail(f"training failed: {summary.error}")
    err.print(f"trained in {time.perf_counter() - trained:.1f} s", highlight=False)
    last = SAMPLE_LAST_DATE.isoformat()
    try:
        run_backfill(settings, None, last, last, "predictions", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    _print_validation(settings, cutoff)
    forecasts = Warehouse(settings.home_dir).query(
        "SELECT horizon, rank, symbol, round(close, 2) AS close, round(100 * pred_return, 2) AS pred_pct, "
        "round(price_lower_80, 2) AS low_80, round(pred_price, 2) AS forecast, round(price_upper_80, 2) AS high_80, "
        "round(price_lower_95, 2) AS low_95, round(price_upper_95, 2) AS high_95 "
        f"FROM predictions WHERE date = DATE '{last}' AND rank <= 2 ORDER BY horizon, rank"
    )
    out.print(f"\nforecasts from {last} (top 2 per horizon by expected return; 80%/95% price intervals):", highlight=False)
    out.print(forecasts.to_string(index=False), highlight=False)
    drift_started = time.perf_counter()
    try:
        run_backfill(settings, None, last, last, "drift_scores", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    drift = Warehouse(settings.home_dir).query(
        "SELECT detector, count(*) AS rows, sum(CAST(breached AS INT)) AS breached, "
        "count(skipped_reason) AS skipped, any_value(skipped_reason) AS why_skipped "
        f"FROM drift_scores WHERE date = DATE '{last}' GROUP BY detector ORDER BY detector"
    )
    out.print(f"\ndrift_scores for {last} ({time.perf_counter() - drift_started:.1f} s; no forecast has matured yet, so the "
              "performance detectors say so):", highlight=False)
    out.print(drift.to_string(index=False), highlight=False)
    out.print(f"\ndemo finished in {time.perf_counter() - started:.1f} s", highlight=False)
    out.print("(the `fresh` check fails by design: the embedded sample ends on 2013-03-01)", highlight=False)
    out.print('try: ibf sql "SELECT * FROM predictions ORDER BY date DESC, horizon, rank LIMIT 12"; make ui', highlight=False)


@app.command()
def train(
    cutoff: Annotated[str | None, typer.Option(help="Training cut-off session (default: the newest stored session but one)")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Dagster's logs")] = False,
) -> None:
    """Materialize trained_models for one cut-off through Dagster (MLflow run + registry version)."""
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

    from ibf_core.storage.warehouse import Warehouse

    dates = Warehouse(settings.home_dir).query("SELECT DISTINCT date FROM features ORDER BY date DESC LIMIT 2")
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


@app.command()
def evaluate(
    horizons: Annotated[str, typer.Option(help="Comma list of horizons in sessions")] = "1,5,20",
    test_days: Annotated[int, typer.Option(help="Test origins (the newest sessions with realized targets)")] = 60,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON")] = Path("evaluation.json"),
    report: Annotated[Path | None, typer.Option(help="Markdown report path (default: next to --json)")] = None,
    source: Annotated[str | None, typer.Option(help="sample, csv or ibkr (default: IBF_SOURCE)")] = None,
    csv: Annotated[str | None, typer.Option(help="CSV/Parquet file or folder for --source csv")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma list (default: IBF_UNIVERSE)")] = None,
    start: Annotated[str | None, typer.Option(help="First bar date to load (default: IBF_HISTORY_START)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Neural training steps (default: IBF_MODEL_MAX_STEPS)")] = None,
    members: Annotated[str | None, typer.Option(help="Trained members, e.g. gbdt or lstm,tft,gbdt")] = None,
    refit_every: Annotated[int | None, typer.Option(help="Sessions per fold before refitting (default: --test-days)")] = None,
    policy_backtest: Annotated[bool, typer.Option(help="Also backtest drift-triggered vs fixed-cadence vs no retraining")] = False,
    policy_start: Annotated[str | None, typer.Option(help="First session of the policy backtest (default: 2 years before the data ends)")] = None,
    policy_members: Annotated[str, typer.Option(help="Members trained in the policy backtest (every retrain trains them)")] = "gbdt",
    policy_cadence: Annotated[int, typer.Option(help="Sessions between retrains of the fixed-cadence policy")] = 63,
) -> None:
    """Walk-forward evaluation of every member against the random walk; writes JSON and a markdown report."""
    import pandas as pd

    from ibf_core.calendar import to_date
    from ibf_core.evaluation.walkforward import walk_forward, write_outputs
    from ibf_core.features.pipeline import compute_features
    from ibf_core.models import ModelDataError
    from ibf_core.models.config import ModelConfig, resolve_device
    from ibf_core.models.dataset import build_panel
    from ibf_core.sources import make_source
    from ibf_core.sources.errors import SourceError

    _quiet_dagster()
    settings = _settings(source=source, csv_path=csv, universe=symbols, model_members=members)
    try:
        wanted = tuple(sorted({int(h) for h in horizons.split(",") if h.strip()}))
        config = ModelConfig.from_settings(settings, horizons=wanted, **({"max_steps": max_steps} if max_steps else {}))
        device = resolve_device(settings.accelerator)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc), 2)
    first = to_date(start) if start else settings.history_start
    try:
        bars = make_source(settings).fetch_daily_bars(settings.universe, first, dt.date.today())
        err.print(f"{len(bars):,} bars of {bars['symbol'].nunique()} symbols from {settings.source}", highlight=False)
        features = compute_features(bars, benchmark=settings.benchmark)
        panel = build_panel(bars, features, config.horizons)
        result = walk_forward(
            panel, config, test_days=test_days, refit_every=refit_every, cost_bps=settings.cost_bps, device=device,
            progress=lambda message: err.print(message, highlight=False),
        )
        policy = None
        if policy_backtest:
            from ibf_core.evaluation.policy import backtest_policies
            from ibf_core.monitoring import DriftPolicy

            last = panel["date"].max()
            first = pd.Timestamp(to_date(policy_start)) if policy_start else last - pd.DateOffset(years=2)
            policy = backtest_policies(
                panel, config.replace(members=policy_members.split(",")), DriftPolicy.from_settings(settings), first, last,
                cadence=policy_cadence, cooldown=settings.retrain_cooldown_sessions,
                progress=lambda message: err.print(message, highlight=False),
            )
    except (SourceError, ModelDataError, ValueError) as exc:
        _fail(str(exc))
    json_path, report_path = write_outputs(result, json_out, report, policy)
    for h, verdict in result.results["verdicts"].items():
        out.print(verdict["statement"], highlight=False)
    if policy is not None:
        from ibf_core.evaluation.policy import markdown

        out.print(markdown(policy), highlight=False)
    out.print(f"wrote {json_path} and {report_path}", highlight=False)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port of the Dagster UI")] = 3000) -> None:
    """Start the Dagster UI and daemon (dagster dev) on 127.0.0.1 with the instance under IBF_HOME."""
    from ibf_dagster.instance import prepare_dagster_home

    settings = _settings()
    prepare_dagster_home(settings)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    dagster = str(Path(sys.executable).with_name("dagster"))
    os.execv(dagster, [dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the REST API")] = 8000,
) -> None:
    """Serve the REST API (forecasts, models, retraining, metrics; OpenAPI at /docs) with uvicorn."""
    from ibf_serve.app import serve as run_serve

    run_serve(_settings(), host=host, port=port)


@api_key_app.command("new")
def api_key_new() -> None:
    """Print a new API key (shown once) and the digest to put into IBF_API_KEYS or IBF_API_KEYS_FILE."""
    from ibf_serve.auth import new_key

    key, digest = new_key()
    out.print(f"key:    {key}\ndigest: {digest}", highlight=False)
    err.print("Give the key to the client; configure only the digest (IBF_API_KEYS=<digest>). The key is not stored.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
