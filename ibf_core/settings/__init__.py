"""All ibf settings in one place: environment variables (``IBF_*``) over ``config/settings.toml`` over defaults."""

from __future__ import annotations

import datetime as dt
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from ibf_core.models.names import trained_members  # the member names are the one list settings accept
from ibf_core.portfolio.spec import DEFAULT_PORTFOLIOS, validate_portfolios
from ibf_core.settings.values import (  # noqa: F401 - re-exported: the settings' public names
    DEFAULT_UNIVERSE,
    RENAMED_ENV,
    SECRET_MARKERS,
    SYMBOL_PATTERN,
    SettingsError,
    TomlFlatSource,
    normalize_symbol,
    password_of,
    split_list,
    url_secrets,
)


class Settings(BaseSettings):
    """Runtime configuration. Every field is read from ``IBF_<NAME>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="IBF_", extra="ignore", validate_default=True)

    home: Path = Field(Path(".ibf"), description="State folder: warehouse, Dagster instance (`dagster/`), MLflow "
        "store, IB download cache")
    min_free_mib: int = Field(1024, ge=0, description="Free space (MiB) the filesystem under `IBF_HOME` must keep: "
        "below it `/ready` answers 503 and the `market_bars:disk_space` check warns (0 = no floor); see "
        "Troubleshooting: Disk space")
    storage_faults: str = Field("", description="Tests only: faults the atomic writer of every process that opens "
        "the warehouse injects, e.g. `full_disk_files=-1` (every staged file fails with ENOSPC) or "
        "`full_disk_skip=1,full_disk_files=2`; empty = none")
    source: Literal["sample", "csv", "ibkr"] = Field("sample", description="Where market bars come from: `sample` "
        "(the embedded real sample), `csv` (your files), `ibkr` (TWS / IB Gateway)")
    csv_path: Path | None = Field(None, description="CSV/Parquet file or folder for `IBF_SOURCE=csv` (required then)")
    csv_date_format: str | None = Field(
        None,
        description="strptime format of every date in the csv input (e.g. `%d/%m/%Y`); unset: ISO dates only (never "
        "guessed per row)",
    )
    bar_policy: Literal["repair", "strict"] = Field(
        "repair",
        description="Bad csv rows: `repair` (widen small OHLC glitches, drop untrustworthy rows, record both in "
        "`bar_issues`) or `strict` (reject the input listing every problem)",
    )
    # 1%: vendors' open/close and high/low come from different prints (auction vs consolidated tape) and are rounded
    # apart, which puts them a few cents (<0.5%) outside the range; widening by up to 1% stays within a typical
    # daily range (~2%), while a dropped row is a gap that training refuses. Beyond it the row itself is wrong.
    bar_repair_tolerance: float = Field(
        0.01,
        ge=0,
        lt=0.5,
        description="Largest relative OHLC violation (open/close outside [low, high], high below low) that `repair` "
        "widens high/low for; larger ones drop the row",
    )
    universe: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_UNIVERSE), description="Symbols "
        "(comma list); letters, digits, `.`, `-`")
    history_start: dt.date = Field(
        dt.date(2000, 3, 1), description="First date of the partitions (the sample starts 2000-03-01)"
    )
    date_partitions: Literal["day", "month", "year"] = Field(
        "month", description="Date granularity of symbol x date partitions: `day`, `month`, `year` (see Performance: "
        "Partition scale)"
    )
    freshness_max_sessions: int = Field(
        3, ge=0, description="`market_bars` is stale when a symbol's newest bar is more sessions behind than this"
    )
    pool_wait_timeout: float = Field(
        120.0, gt=0, description="Seconds a run waits for a `duckdb`/`gpu` pool slot held by another run before it "
        "fails naming that run (a dead holder is freed at once)"
    )
    ib_host: str = Field("127.0.0.1", description="TWS / IB Gateway host")
    ib_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [7497, 7496, 4002, 4001], description="Ports "
        "tried in order (TWS live/paper, Gateway paper/live)")
    ib_client_id: int = Field(1, ge=0, le=2**31 - 1, description="API client id")
    ib_timeout: float = Field(15.0, gt=0, description="Seconds to wait for a connection or a history request")
    ib_request_interval: float = Field(
        0.5, ge=0, description="Minimum seconds between historical-data requests (IB soft pacing)"
    )
    ib_max_requests_per_10min: int = Field(
        60, gt=0, description="Historical requests allowed in any 10-minute window (IB's pacing rule)"
    )
    ib_retries: int = Field(4, ge=0, description="Retries after a pacing violation or a dropped connection")
    ib_max_lines: int = Field(100, ge=1, description="Market-data lines of the account: `ibf stream` serves this "
        "many symbols in `--symbols` order (the watch list first) and names the rest")
    ib_realtime_bars_per_10min: int = Field(60, ge=1, description="`ibf stream`: real-time-bar requests in any 10 "
        "minutes (IB's pacing); more wait their turn")
    stream_flush_seconds: float = Field(1.0, gt=0, description="`ibf stream`: seconds between micro-batch writes of "
        "`intraday_bars` and `quotes`")
    stream_bar_types: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["TRADES"], description="`ibf stream`: "
        "5-second real-time bar types per served symbol, comma list of `TRADES`, `MIDPOINT`, `BID`, `ASK`, "
        "`BID_ASK` (stored in `intraday_bars`, keyed by `what`; IB documents TRADES, MIDPOINT, BID and ASK for "
        "real-time bars, so a real gateway may refuse `BID_ASK`: the collector logs the error per symbol)")
    stream_tick_symbols: Annotated[list[str], NoDecode] = Field(default_factory=list, description="`ibf stream`: "
        "symbols (if served) that also get tick-by-tick trades (`trades`) and market depth (`depth`); comma list; "
        "IB allows few such subscriptions")
    stream_depth_rows: int = Field(5, ge=1, le=10, description="`ibf stream`: order-book levels per side for the "
        "symbols of `IBF_STREAM_TICK_SYMBOLS`")
    stream_watchlist: Annotated[list[str], NoDecode] = Field(default_factory=list, description="`ibf stream`: "
        "symbols served first (comma list), before the top and bottom of the newest ranking and then the rest, up "
        "to `IBF_IB_MAX_LINES`")
    stream_retention_days: int = Field(30, ge=0, description="`ibf stream`: sessions older than this many days are "
        "deleted from `trades`, `depth` and `quotes` at start and daily (0 = keep forever; `intraday_bars` are "
        "kept)")
    stream_max_pending_rows: int = Field(500_000, gt=0, description="`ibf stream`: rows it holds in memory while "
        "the disk is full (each flush retries; about 1 KiB each); past it the stream stops with the disk-full error "
        "(see Troubleshooting: Disk space)")
    stream_max_lag_seconds: float = Field(60.0, gt=0, description="Dagster check `intraday_bars:stream_lag`: during "
        "market hours every streamed symbol's newest 5-second bar ended at most this many seconds ago")
    live_price_max_age_seconds: float = Field(300.0, gt=0, description="`ibf forecasts --live` and `POST /predict` "
        "with `live_price`: a streamed price older than this is not used (the origin close is, and the row says "
        "why)")
    ib_bid_ask: bool = Field(False, description="Also fetch IB `BID_ASK` daily bars so `market_bars.spread` holds "
        "the real quoted spread")
    benchmark: str = Field("SPY", description="Benchmark for beta/correlation features and "
        "the portfolios' excess return; the equal-weighted universe when it is not in the data")
    news_source: Literal["alphavantage", "file", "none"] = Field("none", description="News for `news_sentiment`: "
        "`alphavantage`, `file` or `none`")
    news_file: Path | None = Field(None, description="CSV/JSON headlines scored offline with VADER, for "
        "`IBF_NEWS_SOURCE=file`")
    alphavantage_url: str = Field("https://www.alphavantage.co", description="Alpha Vantage base URL (point it at "
        "`ibf av-sim` to try offline)")
    alphavantage_requests_per_day: int = Field(25, gt=0, description="Daily request quota of your Alpha Vantage plan "
        "(news and fundamentals together)")
    fundamentals_source: Literal["alphavantage", "sample", "none"] = Field(
        "sample",
        description="Fundamentals, earnings and macro for `fundamentals`/`macro_indicators`: `alphavantage` "
        "(OVERVIEW, EARNINGS, EARNINGS_CALENDAR and the economic indicators, under the same key and daily quota as "
        "news), `sample` (the real classification of the embedded symbols only; no earnings or macro) or `none`",
    )
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Training device: `auto` (CUDA when torch sees one, else CPU), `cpu`, `gpu` (fails "
        "without CUDA)"
    )
    model_members: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["lstm", "tft", "gbdt", "gbdt_rank", "reversal_1", "reversal_5", "momentum_20", "momentum_12_1"],
        description="Trained ensemble members (comma list of registered members: `lstm`, `tft`, `gbdt`, `gbdt_rank` "
        "and the textbook factors `reversal_1`, `reversal_5`, `momentum_20`, `momentum_12_1`); the naive and drift "
        "baselines always run",
    )
    model_max_steps: int = Field(200, ge=1, description="Maximum optimizer steps per neural member (early stopping may end sooner)")
    model_input_size: int = Field(60, ge=5, description="Sessions of history the neural members read per forecast")
    model_validation_sessions: int = Field(
        60, ge=20, description="Validation origins per training (ensemble weights, interval calibration, metrics)"
    )
    model_seed: int = Field(7, ge=0, description="Seed of every member (LSTM and GBDT training on the CPU is tested "
        "bit-reproducible)")
    model_min_independent_targets: int = Field(
        10, ge=1, description="Independent validation targets (validation dates / h) a horizon needs before the ensemble's "
        "point forecast may leave the random walk and its ranking may follow the validation rank IC"
    )
    model_memory_budget_mib: int | None = Field(
        None, ge=256, description="Memory (MiB) a training may use at its peak; unset: what the machine has "
        "available. A larger estimate (runtime, panel copies, GBDT matrices, neural batch and predict chunk) is "
        "refused before anything trains, with one `error:` line naming the estimate and the settings that lower it"
    )
    model_importance_max_origins: int = Field(
        4096, ge=100, description="Validation origins permutation feature importance forecasts at most; beyond it "
        "whole dates are sampled evenly (at 500 symbols: 8 of 45-60 dates) and the importance facts say so "
        "(`rows.sampled`); each group costs two neural forecasts of them"
    )
    model_name: str = Field("ibf-forecaster", description="MLflow registered-model name")
    mlflow_experiment: str = Field("ibf-training", description="MLflow experiment of training runs (local store: "
        "`$IBF_HOME/mlflow.db`, artifacts: `$IBF_HOME/mlflow-artifacts/`)")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking store: an MLflow server (`http://host:5000`, as `ibf stack up` and "
        "compose run) or a database URL; unset: `$IBF_HOME/mlflow.db`. A URI carrying a password is refused (it "
        "would travel in run config): give the password to the server or `MLFLOW_TRACKING_PASSWORD`"
    )
    mlflow_artifacts_uri: str | None = Field(
        None, description="Artifact location of a new experiment: a folder or `s3://bucket/prefix`; unset: "
        "`$IBF_HOME/mlflow-artifacts`, or the tracking server's own artifact store"
    )
    cost_bps: float = Field(10.0, ge=0, description="Trading cost per side (basis points) in the top-k spread metric")
    portfolios: Annotated[dict[str, Any], AfterValidator(validate_portfolios)] = Field(
        default_factory=lambda: dict(DEFAULT_PORTFOLIOS), description="Portfolios: JSON object name -> strategy "
        "(`topk`, `topk_dropout`, `long_short`) and parameters, see [Portfolios](portfolios.md); the default is "
        "long-only equal weight on the best-ranked 10% (at least 2) of the universe, rebalanced every session")
    portfolio_capital: float = Field(100_000.0, gt=0, description="USD capital of each portfolio at NAV 1.0: "
        "IB's per-share commission with its per-order minimum and maximum applies to trades of that size")
    portfolio_slippage_bps: float = Field(0.0, ge=0, description="Portfolio cost per traded dollar (bps) beyond "
        "IB's commission, regulatory fees and half the spread (market impact)")
    drift_performance_sessions: int = Field(30, ge=5, description="Sessions of matured forecasts in the rolling performance metrics")
    drift_horizon: int = Field(1, ge=1, description="Forecast horizon (sessions) the performance monitor and the "
        "CUSUM watch")
    drift_feature_window: int = Field(60, ge=20, description="Recent sessions of features tested against the model's "
        "training reference")
    drift_reference_sessions: int = Field(250, ge=50, description="Newest training-window sessions per symbol "
        "forming the drift reference")
    drift_mase_threshold: float = Field(
        1.10, gt=0, description="Performance breach: rolling MAE relative to the random walk (MASE) above this"
    )
    drift_consecutive: int = Field(3, ge=1, description="Consecutive breached evaluations (performance, coverage; "
        "within `IBF_DRIFT_LOOKBACK_DAYS`) that demand a retrain")
    drift_lookback_days: int = Field(30, ge=1, description="Calendar days in which those consecutive breaches must "
        "fall")
    drift_ks_alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise level of the per-feature KS / CVM tests "
        "(Bonferroni over the features)")
    drift_mmd_alpha: float = Field(0.01, gt=0, lt=1, description="Level of the Benjamini-Hochberg correction over "
        "the universe's MMD p-values (confirmed feature drift)")
    drift_psi_threshold: float = Field(0.25, gt=0, description="PSI above which a feature counts as shifted")
    drift_cusum_h: float = Field(5.0, gt=0, description="CUSUM decision interval on standardized forecast residuals")
    drift_coverage_tolerance: float = Field(0.05, gt=0, lt=1, description="Interval coverage may miss its nominal "
        "level by this much (and must miss it significantly to count)")
    retrain_cooldown_sessions: int = Field(21, ge=0, description="Sessions after a drift retrain during which no "
        "other drift retrain is requested")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="REST API keys as hex SHA-256 digests (comma list; `ibf api-key new` "
        "prints a key and its digest)"
    )
    api_keys_file: Path | None = Field(None, description="File of REST API key digests, one per line (`#` comments), "
        "added to `IBF_API_KEYS`")
    api_rate_limit: int = Field(120, ge=0, description="REST API requests per minute per key (0 = no limit); over "
        "it: 429 with `Retry-After`")
    api_max_symbols: int = Field(100, ge=1, description="Most symbols one REST API request may ask for (more: 422)")
    api_metrics_public: bool = Field(True, description="Serve `/metrics` without an API key (for a Prometheus "
        "scraper)")
    api_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Origins allowed by CORS (comma list; empty = CORS off)")
    api_metrics_cache_seconds: float = Field(10.0, ge=0, description="Seconds a scrape reuses the warehouse / "
        "instance figures of the previous scrape")
    api_fresh_warm_seconds: float = Field(
        2.0, ge=0, description="Seconds between the API's looks for a new `market_bars`/`features` write; once one "
        "settles, it reads what the next `fresh` prediction reads, so the first caller after a daily cycle is "
        "answered from memory (each worker does it; 0 = off)"
    )
    api_workers: int = Field(1, ge=1, le=64, description="Worker processes of `ibf serve` (`--workers`); with more "
        "than one, the rate limit and the metrics are shared through files in the run folder (`IBF_SERVE_RUN_DIR`)")
    serve_run_dir: Path | None = Field(None, description="The folder the workers of one `ibf serve` share (metrics, "
        "rate-limit rings); `ibf serve --workers N` sets it to `<state>/serve/<port>/` and empties it at start. "
        "Set it (and `PROMETHEUS_MULTIPROC_DIR=<it>/metrics`) only when another process manager runs "
        "`ibf_serve.app:app_for_worker`")
    dagster_url: str = Field("http://127.0.0.1:3000", description="Dagster webserver (`make ui`) that "
        "`POST /retrain` submits runs to (GraphQL)")
    alert_webhook: SecretStr | None = Field(None, description="URL receiving a Slack-compatible JSON POST per failed "
        "check; a secret: never logged or stored")
    dagster_pg_url: SecretStr | None = Field(
        None, description="Postgres URL (`postgresql://user:password@host:port/db`) for the Dagster instance's runs, "
        "event logs and schedules; unset: SQLite under `IBF_HOME/dagster`. A secret: `dagster.yaml` names only the "
        "variable. Unreachable or wrong: one `error:` line naming it, nothing written (see Deployment)"
    )
    executor: Literal["default", "k8s"] = Field(
        "default", description="How runs execute steps: `default` (Dagster's multiprocess executor) or `k8s` "
        "(`dagster_k8s.k8s_job_executor`: each step a Kubernetes Job; `trained_models` asks for "
        "`nvidia.com/gpu: 1`)"
    )
    k8s_gpu_node_selector: dict[str, str] = Field(
        default_factory=dict, description="With `IBF_EXECUTOR=k8s`: node labels (JSON object) a training pod must "
        'match, e.g. `{"accelerator": "nvidia-h100"}`'
    )
    k8s_gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="With `IBF_EXECUTOR=k8s`: tolerations (JSON list of Kubernetes "
        "tolerations) of a training pod"
    )
    warehouse: Literal["lake", "ducklake"] = Field(
        "lake", description="Warehouse backend: `lake` (Parquet files per partition under `IBF_HOME/lake`, DuckDB "
        "views in `warehouse.duckdb`) or `ducklake` (DuckLake tables; several processes and machines write one "
        "lake; `IBF_DUCKLAKE_CATALOG`, `IBF_DUCKLAKE_DATA_PATH`; see Deployment)"
    )
    ducklake_catalog: SecretStr | None = Field(
        None,
        description="With `IBF_WAREHOUSE=ducklake`: the catalog, `sqlite:/path/catalog.sqlite`, a DuckDB file path "
        "(one process at a time), or `postgres:dbname=lake host=... port=... user=... password=...` (several "
        "machines); unset: `sqlite:IBF_HOME/ducklake/catalog.sqlite`. A secret (it may carry a password): never "
        "logged; a catalog that cannot be opened is one `error: IBF_DUCKLAKE_CATALOG: ...` line, nothing written",
    )
    ducklake_data_path: str | None = Field(
        None, description="With `IBF_WAREHOUSE=ducklake`: folder or `s3://bucket/prefix/` of the data files (S3 "
        "credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`); unset: "
        "`IBF_HOME/ducklake/data/`. A prefix that cannot be listed is one `error: IBF_DUCKLAKE_DATA_PATH: ...` "
        "line"
    )
    ducklake_keep_hours: float = Field(
        24.0, ge=0, description="With `IBF_WAREHOUSE=ducklake`: DuckLake snapshots older than this many hours are "
        "expired, and the data files only they used deleted, after a write (checked at most hourly per process; "
        "a daily cycle at 500 symbols replaces ~13 MB of files). 0 keeps every snapshot (time travel, growing disk)"
    )
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "aws_access_key_id"), description="S3 access key "
        "for an `s3://` `IBF_DUCKLAKE_DATA_PATH` (the standard variable name); a secret"
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"), description="S3 "
        "secret key for an `s3://` `IBF_DUCKLAKE_DATA_PATH` (the standard variable name); a secret"
    )
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "aws_region"), description="S3 "
        "region of an `s3://` `IBF_DUCKLAKE_DATA_PATH` (the standard variable name)")
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "aws_endpoint_url"), description="S3-compatible "
        "endpoint (MinIO, R2, ...; path-style) of an `s3://` `IBF_DUCKLAKE_DATA_PATH`, e.g. `http://minio:9000`"
    )
    dagster_event_batch_size: int = Field(
        1000, ge=0, description="A step's partition materializations written at once (exported as "
        "`DAGSTER_EVENT_BATCH_SIZE`; Postgres: one INSERT; SQLite: one transaction per file, ibf's "
        "`BatchedSqliteEventLogStorage`; 0 = one at a time)"
    )
    backup_dir: Path | None = Field(
        None, description="Folder of the daily `backup` schedule's backups (`ibf-backup-<UTC time>/` each, as "
        "`ibf backup create` writes them). The schedule is stopped by default: turn it on in the UI (Automation); "
        "a run without this setting fails naming it"
    )
    backup_retention: int = Field(7, ge=1, description="The `backup` schedule keeps this many newest backups in "
        "`IBF_BACKUP_DIR` and deletes older ones (folders `ibf-backup-*` only)")
    alphavantage_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ALPHAVANTAGE_API_KEY", "alphavantage_api_key"),
        description="Alpha Vantage key (environment variable `ALPHAVANTAGE_API_KEY`); read from the environment "
        "only, never logged or stored; a secret",
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        config_file = os.environ.get("IBF_CONFIG", "config/settings.toml")
        return (init_settings, env_settings, TomlFlatSource(settings_cls, Path(config_file)))

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """A variable that was renamed is an error, never silently ignored."""
        stale = [f"{old} (now {new})" for old, new in RENAMED_ENV.items() if old in os.environ]
        if stale:
            raise SettingsError(f"renamed setting(s): {', '.join(stale)}")
        return data

    @classmethod
    def secret_field_names(cls) -> set[str]:
        """Fields holding secrets (never serialized into run config, metadata or logs)."""
        return {name for name, f in cls.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}

    def replace(self, **changes: Any) -> "Settings":
        """These settings with ``changes`` applied and validated (e.g. a run's ``--source csv --csv PATH``)."""
        return load_settings(**{**{k: getattr(self, k) for k in type(self).model_fields}, **changes})

    def secret_values(self) -> list[str]:
        """Every secret a log line, metadata or error body must never show: the secret settings (the webhook URL
        with its token-carrying path), and values of environment variables named like a key, token or password."""
        found = [value for name, value in os.environ.items() if value and any(m in name.upper() for m in SECRET_MARKERS)]
        if self.alphavantage_api_key is not None:
            found.append(self.alphavantage_api_key.get_secret_value())
        if self.alert_webhook is not None:
            found += url_secrets(self.alert_webhook.get_secret_value())
        if self.aws_secret_access_key is not None:
            found.append(self.aws_secret_access_key.get_secret_value())
        if self.ducklake_catalog is not None:
            catalog = self.ducklake_catalog.get_secret_value()
            found += [m.group(2) for m in re.finditer(r"password\s*=\s*(['\"]?)([^\s'\"]+)", catalog, re.IGNORECASE)]
        if self.dagster_pg_url is not None:  # the URL and its password (its database name is no secret)
            url = self.dagster_pg_url.get_secret_value()
            found += [url] + [p for p in [password_of(url)] if p]
        return found

    @field_validator("universe", "ib_ports", "model_members", "api_keys", "api_cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("universe")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        symbols = [normalize_symbol(s) for s in value]
        if not symbols:
            raise ValueError("the universe is empty")
        return list(dict.fromkeys(symbols))

    @field_validator("model_members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        known = trained_members()
        members = [m.strip().lower() for m in value]
        unknown = sorted(set(members) - set(known))
        if unknown or not members:
            raise ValueError(f"members must be a non-empty comma list of {', '.join(known)} (unknown: {unknown})")
        return list(dict.fromkeys(members))

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_password_in_tracking_uri(cls, value: str | None) -> str | None:
        # The URI travels in run config and metadata; a password belongs to the MLflow server (or MLFLOW_TRACKING_PASSWORD).
        if value and password_of(value):
            raise ValueError("must not carry a password: run an MLflow server with that store, or set MLFLOW_TRACKING_PASSWORD")
        return value

    @field_validator("api_keys")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        digests = [v.strip().lower() for v in value]
        if any(not re.fullmatch(r"[0-9a-f]{64}", d) for d in digests):
            raise ValueError("API keys are given as hex SHA-256 digests (64 hex digits; ibf api-key new prints one)")
        return digests

    @field_validator("ib_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if not value or any(not 0 < p < 65536 for p in value):
            raise ValueError("ports must be integers in 1..65535")
        return value

    @field_validator("csv_date_format")
    @classmethod
    def _date_format(cls, value: str | None) -> str | None:
        """A format that cannot give back day, month and year would mis-date rows silently."""
        if value is None or not value.strip():
            return None
        probe = dt.datetime(2021, 11, 23)
        try:
            parsed = dt.datetime.strptime(probe.strftime(value), value)
        except ValueError as exc:
            raise ValueError(f"not a strptime format ({exc})") from None
        if parsed.date() != probe.date():
            raise ValueError("the format must hold the day, month and year (e.g. %d/%m/%Y)")
        return value

    @field_validator("benchmark")
    @classmethod
    def _benchmark(cls, value: str) -> str:
        return normalize_symbol(value)

    @field_validator("stream_bar_types", "stream_tick_symbols", "stream_watchlist", mode="before")
    @classmethod
    def _stream_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("stream_bar_types")
    @classmethod
    def _bar_types(cls, value: list[str]) -> list[str]:
        types = [t.strip().upper() for t in value]
        allowed = ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK")
        unknown = [t for t in types if t not in allowed]
        if unknown or not types:
            raise ValueError(f"bar types must be a non-empty comma list of {', '.join(allowed)} (unknown: {', '.join(unknown) or 'none'})")
        return list(dict.fromkeys(types))

    @field_validator("stream_tick_symbols", "stream_watchlist")
    @classmethod
    def _stream_symbols(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_symbol(s) for s in value))

    @model_validator(mode="after")
    def _paths_for_sources(self) -> "Settings":
        if self.source == "csv" and self.csv_path is None:
            raise ValueError("IBF_SOURCE=csv needs IBF_CSV_PATH")
        if self.news_source == "file" and self.news_file is None:
            raise ValueError("IBF_NEWS_SOURCE=file needs IBF_NEWS_FILE")
        return self

    # Derived locations: every piece of state lives under home.
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def warehouse_path(self) -> Path:
        return self.home_dir / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home_dir / "dagster"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def experiment_artifacts(self) -> Path | str | None:
        """Where a new MLflow experiment keeps its artifacts (None: a tracking server's own store)."""
        if self.mlflow_artifacts_uri:
            return self.mlflow_artifacts_uri
        if self.mlflow_tracking_uri and self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return None
        return self.mlflow_artifacts_dir

    @property
    def mlflow_is_local(self) -> bool:
        """True for the default SQLite store under IBF_HOME (which a reader must not create)."""
        return self.mlflow_tracking_uri is None

    @property
    def cache_dir(self) -> Path:
        return self.home_dir / "cache"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home_dir / "mlflow-artifacts"

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir / "models"


def _env_name(loc: tuple[Any, ...]) -> str:
    field = str(loc[0]) if loc else ""
    return f"IBF_{field.upper()}" if field else "IBF settings"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one message per offending variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = _env_name(err["loc"]) if err["loc"] else "settings"
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
    except PydanticSettingsError as exc:  # a JSON-valued variable (a list or object) that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = _env_name((field.group(1),)) if field else "IBF settings"
        raise SettingsError(f"invalid settings: {name}: not valid JSON") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return load_settings()


def library_default(name: str, value: str) -> None:
    """A third-party library's environment variable set to ``value`` unless the user set it (this module is the
    one place that touches the environment)."""
    os.environ.setdefault(name, value)


def export_to_children(values: dict[str, str]) -> None:
    """Put ``values`` into this process' environment for the processes it starts next (the workers of
    ``ibf serve``); with ``Settings`` the one place that touches the environment."""
    os.environ.update(values)


def child_environment(values: dict[str, str]) -> dict[str, str]:
    """This process' environment plus ``values``: the environment of a service process ibf starts."""
    return {**os.environ, **values}
