"""The self-correcting loop through the real Dagster instance: drift_scores on CSV data with an injected regime
change, the retrain_on_drift sensor, the retrain, and predictions that follow the new model."""


import numpy as np
import pandas as pd
import pytest

from ibf_core.calendar import trading_days
from ibf_core.monitoring.scores import DriftPolicy, retrain_decision
from ibf_core.settings import get_settings
from ibf_core.storage.warehouse import Warehouse
from helpers.sensors import sensor_context

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
SHIFT = pd.Timestamp("2012-04-02")
MODEL_CUTOFF = "2011-12-30"


def regime_bars(shift: bool, seed: int = 11) -> pd.DataFrame:
    """Random-walk bars 2008-01..2012-07; with ``shift`` volatility triples and the drift turns negative from SHIFT."""
    rng = np.random.default_rng(seed)
    days = trading_days("2008-01-02", "2012-07-31")
    after = (days >= SHIFT) if shift else np.zeros(len(days), dtype=bool)
    frames = []
    for i, symbol in enumerate(SYMBOLS):
        sigma = np.where(after, 0.03, 0.01)
        mu = np.where(after, -0.004, 0.0003)
        logret = mu + sigma * rng.standard_normal(len(days))
        close = 40.0 * (i + 1) * np.exp(np.cumsum(logret))
        gap = sigma * 0.3 * rng.standard_normal(len(days))
        open_ = close * np.exp(-logret + gap)
        high = np.maximum(open_, close) * np.exp(np.abs(sigma * 0.5 * rng.standard_normal(len(days))))
        low = np.minimum(open_, close) * np.exp(-np.abs(sigma * 0.5 * rng.standard_normal(len(days))))
        volume = rng.integers(500_000, 1_500_000, len(days)).astype(float)
        frames.append(pd.DataFrame({"symbol": symbol, "date": days.date, "open": open_, "high": high, "low": low,
                                    "close": close, "adj_close": close, "volume": volume}))
    return pd.concat(frames, ignore_index=True)


def build_world(tmp_path, monkeypatch, shift: bool):
    csv = tmp_path / "bars.csv"
    regime_bars(shift).to_csv(csv, index=False)
    for name, value in {
        "IBF_SOURCE": "csv",
        "IBF_CSV_PATH": str(csv),
        "IBF_UNIVERSE": ",".join(SYMBOLS),
        "IBF_HISTORY_START": "2008-01-01",
        "IBF_DATE_PARTITIONS": "month",
        "IBF_MODEL_MEMBERS": "gbdt",
        "IBF_BENCHMARK": "AAA",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    from ibf_dagster.runner import backfill, train

    runs = backfill(settings, None, None, "2012-07-31", "*", None, None)
    assert all(r.success for r in runs), [r.error for r in runs]
    assert train(settings, MODEL_CUTOFF).success
    runs = backfill(settings, None, "2012-01-01", "2012-06-30", "predictions", None, None)
    assert runs[0].success, runs[0].error
    return settings


def monthly_drift(settings, months):
    """drift_scores month by month (as the daily automation would advance); returns retrain_rule per month."""
    from ibf_dagster.runner import backfill

    verdicts = {}
    for first in months:
        last = (pd.Timestamp(first) + pd.offsets.MonthEnd(0)).date()
        run = backfill(settings, None, first, last, "drift_scores", None, None)[0]
        assert run.success, run.error
        verdicts[first[:7]] = run.checks["retrain_rule"]
    return verdicts


def daily_decisions(settings) -> dict[pd.Timestamp, bool]:
    history = Warehouse(settings.home_dir).query("SELECT * FROM drift_scores")
    policy = DriftPolicy.from_settings(settings)
    return {d: retrain_decision(history, d, policy)["retrain"] for d in sorted(pd.to_datetime(history["date"]).unique())}


def sensor_result(settings, cursor=None):
    from ibf_dagster.definitions import build_definitions
    from ibf_dagster.instance import get_instance

    defs = build_definitions(settings)
    sensor = defs.get_sensor_def("retrain_on_drift")
    context = sensor_context(defs, get_instance(settings), cursor)
    return sensor(context), context


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of training and drift scoring; a loaded machine must not fail it
def test_regime_change_triggers_exactly_one_gpu_retrain_and_predictions_follow(tmp_path, monkeypatch):
    import dagster as dg

    settings = build_world(tmp_path, monkeypatch, shift=True)
    verdicts = monthly_drift(settings, ["2012-02-01", "2012-03-01", "2012-05-01"])
    assert verdicts["2012-02"] and verdicts["2012-03"], verdicts  # passed before the change
    assert not verdicts["2012-05"], verdicts  # failed (ERROR) after it
    decisions = daily_decisions(settings)
    assert not any(v for d, v in decisions.items() if d < SHIFT), "a retrain was due before the regime change"
    assert any(v for d, v in decisions.items() if d >= SHIFT)

    result, context = sensor_result(settings)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags["ibf/accelerator"] == "gpu"
    assert '"nvidia.com/gpu": 1' in request.tags["dagster-k8s/config"]
    assert request.asset_selection is None or request.asset_selection == [dg.AssetKey("trained_models")]
    assert request.partition_key == "2012-05-31" and request.run_key.startswith("drift-retrain-2012-0")
    # the same episode on the next tick: nothing new
    again, _ = sensor_result(settings, result.cursor)
    assert not again.run_requests

    # Run the request as the daemon would: add the partition, execute with its tags.
    from ibf_dagster.definitions import build_definitions
    from ibf_dagster.instance import get_instance

    instance = get_instance(settings)
    instance.add_dynamic_partitions("model_cutoff", [request.partition_key])
    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    run = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("trained_models")],
                                 partition_key=request.partition_key, tags=request.tags, raise_on_error=False)
    assert run.success
    materialization = run.asset_materializations_for_node("trained_models")[0]
    assert materialization.metadata["model_version"].value == "2"
    assert materialization.metadata["device"].value.startswith("cpu")  # no GPU here: trained on the CPU, said so

    from ibf_dagster.runner import backfill

    runs = backfill(settings, None, "2012-06-01", "2012-06-30", "predictions", None, None)
    assert runs[0].success, runs[0].error
    versions = Warehouse(settings.home_dir).query("SELECT DISTINCT model_version FROM predictions WHERE date > DATE '2012-05-31'")
    assert versions["model_version"].tolist() == ["2"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of training and drift scoring; a loaded machine must not fail it
def test_without_a_regime_change_no_retrain_is_requested(tmp_path, monkeypatch):
    settings = build_world(tmp_path, monkeypatch, shift=False)
    verdicts = monthly_drift(settings, ["2012-03-01", "2012-05-01"])
    assert all(verdicts.values()), verdicts
    assert not any(daily_decisions(settings).values())
    result, _ = sensor_result(settings)
    assert not result.run_requests and result.skip_reason


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of training and drift scoring; a loaded machine must not fail it
def test_policy_backtest_compares_never_fixed_and_drift_retraining():
    from ibf_core.evaluation.policy import backtest_policies, markdown
    from ibf_core.features.pipeline import compute_features
    from ibf_core.models.config import ModelConfig
    from ibf_core.models.dataset import build_panel

    bars = regime_bars(shift=True)
    config = ModelConfig(members=("gbdt",), horizons=(1, 5), gbdt_rounds=60)
    panel = build_panel(bars, compute_features(bars, benchmark=None), config.horizons)
    result = backtest_policies(panel, config, DriftPolicy(), pd.Timestamp("2012-01-03"), pd.Timestamp("2012-07-31"),
                               cadence=40, check_every=5, cooldown=10)
    table = {row["policy"]: row for row in result["table"]}
    assert table["never"]["retrains"] == 0
    assert table["fixed"]["retrains"] == 3  # 145 sessions, every 40: after 40, 80, 120
    assert all(d >= "2012-04-02" for d in table["drift"]["retrain_dates"]) and table["drift"]["retrains"] >= 1
    for row in table.values():
        assert 0.5 < row["mase"] < 2 and row["rolling_mase_max"] >= row["rolling_mase_median"]
    section = markdown(result)
    assert "| drift" in section and "retrained at" in section
