"""All ibf Dagster definitions, assembled in one place from settings."""

from __future__ import annotations

import dagster as dg

from ibf_core.settings import Settings, get_settings
from ibf_dagster.assets.drift import build_drift_scores
from ibf_dagster.assets.features import build_features
from ibf_dagster.assets.fundamentals import build_fundamentals, build_macro_indicators
from ibf_dagster.assets.live import (
    build_live_sources,
    build_live_watch,
    build_microstructure_after_close,
    build_microstructure_daily,
)
from ibf_dagster.assets.market_bars import build_market_bars
from ibf_dagster.assets.models import build_trained_models
from ibf_dagster.assets.news import build_news_sentiment
from ibf_dagster.assets.portfolios import build_portfolios
from ibf_dagster.assets.predictions import build_predictions
from ibf_dagster.backups import build_backup
from ibf_dagster.executors import executor_for
from ibf_dagster.resources import build_resources
from ibf_dagster.sensors import (
    build_check_alerts,
    build_retrain_on_drift,
    build_run_recovery,
    build_universe_sync,
    build_weekly_training,
)


def build_definitions(settings: Settings) -> dg.Definitions:
    live_sources, live_checks = build_live_sources(settings)
    live_watch, live_watch_schedule = build_live_watch(settings)
    backup_job, backup_schedule = build_backup()
    return dg.Definitions(
        assets=[
            build_market_bars(settings),
            *live_sources,
            build_microstructure_daily(settings),
            build_news_sentiment(settings),
            build_fundamentals(settings),
            build_macro_indicators(settings),
            build_features(settings),
            build_trained_models(settings),
            build_predictions(settings),
            build_drift_scores(settings),
            build_portfolios(settings),
        ],
        asset_checks=live_checks,
        jobs=[live_watch, backup_job],
        schedules=[live_watch_schedule, backup_schedule],
        sensors=[
            build_universe_sync(settings),
            build_retrain_on_drift(settings),
            build_weekly_training(settings),
            build_check_alerts(settings),
            build_run_recovery(),
            build_microstructure_after_close(settings),
        ],
        resources=build_resources(settings),
        executor=executor_for(settings),
    )


defs = build_definitions(get_settings())
