"""``ibf demo``: the sample universe end to end through Dagster, printed table by table."""

from __future__ import annotations

import datetime as dt
import time

from ibf_dagster.cli._common import _fail, _quiet_dagster, _settings, err, out, run_backfill
from ibf_dagster.cli.models import _print_validation

# Heavy imports wait until the command runs: `ibf --help` must not load pandas, duckdb or dagster.


def demo() -> None:
    """Sample universe end to end through Dagster: bars, news, features, trained models, ranked forecasts, portfolios, drift."""
    from ibf_core.calendar import trading_days
    from ibf_core.features.pipeline import feature_columns
    from ibf_core.sources.sample import SAMPLE_LAST_DATE
    from ibf_core.storage.backends import open_warehouse
    from ibf_dagster.runner import BackfillError, train as run_train

    _quiet_dagster()
    settings = _settings(source="sample")
    started = time.perf_counter()
    # the sample ends 2013-03-01: later partitions would only hold empty slices
    run_backfill(settings, None, None, SAMPLE_LAST_DATE.isoformat(), "*", "sample", None)
    elapsed = time.perf_counter() - started
    summary = open_warehouse(settings).query(
        "SELECT symbol, count(*) AS bars, min(date) AS first, max(date) AS last, "
        "round(100 * (arg_max(adj_close, date) / arg_min(adj_close, date) - 1), 1) AS total_return_pct "
        "FROM market_bars GROUP BY symbol ORDER BY symbol"
    )
    out.print(summary.to_string(index=False), highlight=False)
    features = open_warehouse(settings).query(
        "SELECT symbol, count(*) AS feature_rows, sum(CAST(warmup AS INT)) AS warmup_rows, "
        "round(arg_max(rsi_14, date), 1) AS last_rsi_14, round(arg_max(hv_20, date), 3) AS last_hv_20, "
        "round(arg_max(beta_60, date), 2) AS last_beta_60 FROM features GROUP BY symbol ORDER BY symbol"
    )
    out.print(f"\nfeatures ({len(feature_columns())} per row; news: {settings.news_source}):", highlight=False)
    out.print(features.to_string(index=False), highlight=False)
    signals = open_warehouse(settings).query(
        "SELECT f.symbol, f.sector, f.industry, f.origin, (SELECT count(*) FROM earnings e WHERE e.symbol = f.symbol) AS earnings "
        "FROM fundamentals f QUALIFY row_number() OVER (PARTITION BY f.symbol ORDER BY f.date DESC) = 1 ORDER BY f.symbol"
    )
    out.print(f"\nfundamentals (IBF_FUNDAMENTALS_SOURCE={settings.fundamentals_source}; what is missing: fundamentals_issues):", highlight=False)
    out.print(signals.to_string(index=False) if len(signals) else "none loaded", highlight=False)
    out.print(f"\nwarehouse: {open_warehouse(settings).describe()}\ndata loaded in {elapsed:.1f} s", highlight=False)

    # Train up to the end of the year before the sample's last, then forecast every later session out of sample (a
    # year's start is a partition boundary whatever IBF_DATE_PARTITIONS says), so the portfolios have a paper track
    # record to trade and the drift monitor has matured forecasts to score.
    held_out = trading_days(dt.date(SAMPLE_LAST_DATE.year, 1, 1), SAMPLE_LAST_DATE)
    cutoff = str(trading_days(SAMPLE_LAST_DATE - dt.timedelta(days=400), held_out[0] - dt.timedelta(days=1))[-1].date())
    first, last = str(held_out[0].date()), str(held_out[-1].date())
    err.print(f"training {', '.join(settings.model_members)} up to {cutoff} (IBF_MODEL_MAX_STEPS={settings.model_max_steps}); "
              f"the {len(held_out)} sessions after it are forecast out of sample", highlight=False)
    trained = time.perf_counter()
    summary = run_train(settings, cutoff)
    if not summary.success:
        _fail(f"training failed: {summary.error}")
    err.print(f"trained in {time.perf_counter() - trained:.1f} s", highlight=False)
    try:
        run_backfill(settings, None, first, last, "predictions", "sample", None)
        run_backfill(settings, None, last, last, "portfolio_weights,portfolio_returns", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    _print_validation(settings, cutoff)
    forecasts = open_warehouse(settings).query(
        "SELECT horizon, rank, symbol, round(close, 2) AS close, round(100 * pred_return, 2) AS pred_pct, "
        "round(price_lower_80, 2) AS low_80, round(pred_price, 2) AS forecast, round(price_upper_80, 2) AS high_80, "
        "round(price_lower_95, 2) AS low_95, round(price_upper_95, 2) AS high_95 "
        f"FROM predictions WHERE date = DATE '{last}' AND rank <= 2 ORDER BY horizon, rank"
    )
    out.print(f"\nforecasts from {last} (top 2 per horizon by expected return; 80%/95% price intervals):", highlight=False)
    out.print(forecasts.to_string(index=False), highlight=False)
    books = open_warehouse(settings).query(
        "SELECT portfolio, count(*) AS sessions, min(date) AS first, max(date) AS last, round(arg_max(nav, date), 4) AS nav, "
        "round(sum(turnover), 2) AS turnover, round(10000 * sum(cost), 1) AS cost_bps FROM portfolio_returns "
        "GROUP BY portfolio ORDER BY portfolio"
    )
    out.print(f"\nportfolios (IBF_PORTFOLIOS) traded on the forecasts from {first}, next-close trades, IB costs:", highlight=False)
    out.print(books.to_string(index=False), highlight=False)
    drift_started = time.perf_counter()
    try:
        run_backfill(settings, None, last, last, "drift_scores", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    drift = open_warehouse(settings).query(
        "SELECT detector, count(*) AS rows, sum(CAST(breached AS INT)) AS breached, "
        "count(skipped_reason) AS skipped, any_value(skipped_reason) AS why_skipped "
        f"FROM drift_scores WHERE date = DATE '{last}' GROUP BY detector ORDER BY detector"
    )
    out.print(f"\ndrift_scores for {last} ({time.perf_counter() - drift_started:.1f} s):", highlight=False)
    out.print(drift.to_string(index=False), highlight=False)
    out.print(f"\ndemo finished in {time.perf_counter() - started:.1f} s", highlight=False)
    out.print("(the `fresh` check fails by design: the embedded sample ends on 2013-03-01)", highlight=False)
    out.print('try: ibf sql "SELECT * FROM predictions ORDER BY date DESC, horizon, rank LIMIT 12"; make ui', highlight=False)
