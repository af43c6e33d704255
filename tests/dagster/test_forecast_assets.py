"""trained_models and predictions through the real Dagster instance, and ibf evaluate on a CSV source."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ibf_core.settings import get_settings
from ibf_core.storage.warehouse import Warehouse
from ibf_dagster.cli import app

SYMBOLS = "AAPL,GOOG,IBM,MSFT"


@pytest.fixture
def small_world(monkeypatch):
    """Sample bars 2009..2013 in yearly partitions, fast members (GBDT + a few LSTM steps)."""
    for name, value in {
        "IBF_UNIVERSE": SYMBOLS,
        "IBF_HISTORY_START": "2009-01-01",
        "IBF_DATE_PARTITIONS": "year",
        "IBF_MODEL_MEMBERS": "lstm,gbdt",
        "IBF_MODEL_MAX_STEPS": "4",
        "IBF_MODEL_INPUT_SIZE": "20",
        "IBF_ACCELERATOR": "auto",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    from ibf_dagster.runner import backfill

    runs = backfill(get_settings(), None, None, "2013-03-01", "*", "sample", None)
    assert all(r.success for r in runs), [r.error for r in runs]
    return get_settings()


@pytest.mark.slow
def test_train_then_predict_uses_the_newest_model_before_each_origin(small_world, monkeypatch):
    from ibf_core.models.registry import list_versions
    from ibf_dagster.runner import backfill, train

    settings = small_world
    # A training the memory budget cannot hold is refused before it starts: one error line, no model version.
    monkeypatch.setenv("IBF_MODEL_MEMORY_BUDGET_MIB", "300")
    get_settings.cache_clear()
    refused = CliRunner().invoke(app, ["train", "--cutoff", "2012-12-31"])
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert refused.exit_code != 0 and len(errors) == 1, refused.output
    assert "training needs an estimated" in errors[0] and "IBF_MODEL_MEMORY_BUDGET_MIB" in errors[0], errors[0]
    assert list_versions(settings.mlflow_uri, settings.model_name) == []
    monkeypatch.delenv("IBF_MODEL_MEMORY_BUDGET_MIB")
    get_settings.cache_clear()

    # Predicting before any model exists is a clear error that writes nothing.
    early = backfill(settings, None, "2013-01-01", "2013-03-01", "predictions", "sample", None)
    assert not early[0].success and "no registered model has a cut-off before 2013-01-02" in early[0].error
    assert Warehouse(settings.home_dir).query("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 0

    first = train(settings, "2012-12-31")
    assert first.success, first.error
    assert first.checks == {"validation_complete": True}
    second = CliRunner().invoke(app, ["train", "--cutoff", "2013-01-31"])  # the CLI path, same instance
    assert second.exit_code == 0, second.output
    assert "v2 (cut-off 2013-01-31, cpu" in second.output and "MAE relative to the random walk" in second.output

    runs = backfill(settings, None, "2013-01-01", "2013-03-01", "predictions", "sample", None)
    assert runs[0].success, runs[0].error
    assert runs[0].checks == {"finite_values": True, "intervals_ordered": True, "all_symbols_present": True, "point_within_80": True}
    rows = Warehouse(settings.home_dir).query(
        "SELECT date, model_version, model_cutoff, count(*) AS n, count(DISTINCT symbol) AS symbols, "
        "min(rank) AS best, max(rank) AS worst FROM predictions GROUP BY ALL ORDER BY date"
    )
    assert (pd.to_datetime(rows["model_cutoff"]) < pd.to_datetime(rows["date"])).all()
    jan = rows[pd.to_datetime(rows["date"]) <= "2013-01-31"]
    feb = rows[pd.to_datetime(rows["date"]) > "2013-01-31"]
    assert set(jan["model_version"]) == {"1"} and set(feb["model_version"]) == {"2"}
    assert (rows["n"] == 4 * 6).all() and (rows["symbols"] == 4).all()
    assert (rows["best"] == 1).all() and (rows["worst"] == 4).all()

    # Matured forecasts are queryable: the forecast_outcomes view equals ibf_core.monitoring.outcomes.matured_outcomes.
    from ibf_core.monitoring.outcomes import matured_outcomes

    store = Warehouse(settings.home_dir)
    view = store.query("SELECT * FROM forecast_outcomes ORDER BY symbol, date, horizon")
    expected = matured_outcomes(store.query("SELECT * FROM predictions"), store.query("SELECT * FROM market_bars"), "2013-03-01")
    expected = expected.sort_values(["symbol", "date", "horizon"]).reset_index(drop=True)
    assert len(view) == len(expected) > 0
    np.testing.assert_allclose(view["abs_error"], expected["abs_error"])
    np.testing.assert_allclose(view["hit_80"], expected["hit_80"])

    # Re-running a partition gives the same rows (idempotent write).
    before = Warehouse(settings.home_dir).query("SELECT * FROM predictions ORDER BY symbol, date, horizon")
    again = backfill(settings, ["IBM"], "2013-02-01", "2013-02-28", "predictions", "sample", None)
    assert again[0].success
    after = Warehouse(settings.home_dir).query("SELECT * FROM predictions ORDER BY symbol, date, horizon")
    pd.testing.assert_frame_equal(before, after)

    # MLflow: one run per training, metrics and the registered versions' tags.
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_uri)
    versions = sorted(client.search_model_versions(f"name='{settings.model_name}'"), key=lambda v: int(v.version))
    assert [v.tags["cutoff"] for v in versions] == ["2012-12-31", "2013-01-31"]
    assert all(len(v.tags["manifest_sha256"]) == 64 for v in versions)
    run = client.get_run(versions[0].run_id)
    assert run.info.status == "FINISHED" and "dagster_run_id" in run.data.tags
    assert str(settings.mlflow_artifacts_dir.resolve()) in run.info.artifact_uri


def test_train_refuses_a_non_session_and_gpu_without_cuda(monkeypatch):
    from ibf_dagster.runner import BackfillError, train

    with pytest.raises(BackfillError, match="not an NYSE session"):
        train(get_settings(), "2012-12-25")
    from ibf_core.models.config import resolve_device

    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="IBF_ACCELERATOR=gpu but torch sees no CUDA"):
            resolve_device("gpu")
        assert resolve_device("auto") == "cpu"


@pytest.mark.timeout(900)  # a whole walk-forward with its portfolio backtests; a loaded machine took 385 s
def test_evaluate_on_a_csv_source_writes_json_and_report(tmp_path):
    from ibf_core.sources.sample import load_sample_bars

    sample = load_sample_bars()
    csv = tmp_path / "bars.csv"
    sample[sample["symbol"].isin(SYMBOLS.split(",")) & (sample["date"] >= "2008-01-01")].to_csv(csv, index=False)
    out = tmp_path / "eval" / "result.json"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--source", "csv", "--csv", str(csv), "--symbols", SYMBOLS, "--horizons", "1,5",
         "--test-days", "40", "--refit-every", "20", "--members", "gbdt", "--json", str(out),
         "--policy-backtest", "--policy-start", "2012-10-01", "--policy-cadence", "40"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    keys = {"n", "mae", "rmse", "rel_mae_vs_naive", "oos_r2", "da", "da_pvalue", "dm_stat", "dm_pvalue", "ic_mean",
            "rank_ic_mean", "rank_ic_t", "coverage_80", "coverage_95", "topk_spread_net"}
    assert set(data["horizons"]) == {"1", "5"}
    for h in ("1", "5"):
        assert set(data["horizons"][h]) == {"naive", "drift", "gbdt", "ensemble"}
        for metrics in data["horizons"][h].values():
            assert keys <= set(metrics)
            assert metrics["n"] == 40 * 4
    assert data["config"]["folds"] == 2
    report = out.with_suffix(".md").read_text()
    assert "h=1" in report and "random walk" in report
    assert "h=5:" in result.output
    policies = {row["policy"]: row for row in data["policy_backtest"]["table"]}
    assert set(policies) == {"never", "fixed", "drift"} and policies["never"]["retrains"] == 0
    assert "Retraining policies (backtest)" in report and "| fixed" in result.output
    # the default portfolio (topk, horizon 1) on every forecaster's out-of-sample forecasts and on the factors
    topk = data["portfolios"]["topk"]
    assert set(topk["forecasters"]) == {"naive", "drift", "gbdt", "ensemble"} and len(topk["factors"]) == 4
    for run in topk["forecasters"].values():
        assert run["rebalances"] == 40 and run["sessions"] == 41 and run["net"]["cost_drag"] > 0
    assert "## Portfolios: one strategy on every forecaster and factor" in report and "portfolio topk (h=1)" in result.output


def test_evaluate_rejects_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--horizons", "0,5", "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "horizons must be positive" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--members", "arima", "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "IBF_MODEL_MEMBERS" in result.output
    result = CliRunner().invoke(
        app, ["evaluate", "--symbols", "AAPL", "--start", "2012-06-01", "--members", "gbdt", "--json", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 1 and "too little history" in result.output
    assert not (tmp_path / "x.json").exists()


def test_all_symbols_present_fails_when_a_whole_origin_session_is_missing():
    """Expected rows come from the origins that have features, never from the frame being checked."""
    from ibf_core.models import HORIZONS
    from ibf_dagster.assets.predictions import _checks

    days = pd.to_datetime(["2013-01-02", "2013-01-03", "2013-01-04"])
    rows = [{"symbol": s, "date": d, "horizon": h, "pred_return": 0.0, "pred_price": 1.0, "lower_80": -0.1, "upper_80": 0.1,
             "lower_95": -0.2, "upper_95": 0.2} for s in ("AAA", "BBB") for d in days for h in HORIZONS]
    frame = pd.DataFrame(rows)
    expected = {(s, d) for s in ("AAA", "BBB") for d in days}
    by_name = {c.check_name: c for c in _checks(frame, expected)}
    assert by_name["all_symbols_present"].passed
    without_day = frame[frame["date"] != days[1]]  # every symbol lacks the same session
    by_name = {c.check_name: c for c in _checks(without_day, expected)}
    assert not by_name["all_symbols_present"].passed
    assert by_name["all_symbols_present"].metadata["origins_missing"].value == 2
    one_horizon_short = frame[~((frame["symbol"] == "AAA") & (frame["horizon"] == 20))]
    assert not {c.check_name: c for c in _checks(one_horizon_short, expected)}["all_symbols_present"].passed


def test_a_point_outside_its_conformal_interval_is_a_warning_not_a_blocking_failure():
    """Split-conformal bounds of a model biased in validation lie off its point forecast (seen on 2 symbols x
    2 years: the predictions backfill failed its blocking check); only crossed bounds are an error."""
    import dagster as dg
    import pandas as pd

    from ibf_dagster.assets.predictions import _checks

    row = {"symbol": "AAA", "date": pd.Timestamp("2013-01-02"), "horizon": 1, "pred_return": 0.001, "pred_price": 10.0,
           "lower_95": 0.002, "lower_80": 0.004, "upper_80": 0.02, "upper_95": 0.03}
    shifted = pd.DataFrame([row])
    results = {r.check_name: r for r in _checks(shifted, set())}
    assert results["intervals_ordered"].passed and results["finite_values"].passed
    assert not results["point_within_80"].passed and results["point_within_80"].severity == dg.AssetCheckSeverity.WARN
    crossed = pd.DataFrame([{**row, "lower_80": 0.025}])  # the 80% interval pokes out of the 95% one
    assert not {r.check_name: r for r in _checks(crossed, set())}["intervals_ordered"].passed
