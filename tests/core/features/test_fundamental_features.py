"""Fundamental, earnings, sector and macro features: point in time, never before publication, never back-filled."""

import numpy as np
import pandas as pd
import pytest
from helpers.bars import make_bars

from ibf_core.features import fundamental, macro
from ibf_core.features.pipeline import compute_features, sparse_features
from ibf_core.fundamentals.inputs import FundamentalInputs

SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE")
JOINED = fundamental.COLUMNS + macro.COLUMNS


def _inputs(seed: int = 0) -> FundamentalInputs:
    rng = np.random.default_rng(seed)
    sectors = ["TECHNOLOGY", "TECHNOLOGY", "FINANCE", "FINANCE", "FINANCE"]
    recordings = pd.to_datetime(["2020-06-01", "2020-09-01", "2021-01-04"])
    overview = pd.DataFrame([
        {"symbol": s, "date": d, "asset_type": "Common Stock", "exchange": "NYSE", "sector": sec, "industry": f"IND {i % 3}",
         "shares_outstanding": rng.uniform(1e6, 1e8), "analyst_target_price": rng.uniform(20, 200),
         "analyst_strong_buy": rng.integers(0, 5), "analyst_buy": rng.integers(0, 5), "analyst_hold": rng.integers(0, 5),
         "analyst_sell": rng.integers(0, 5), "analyst_strong_sell": rng.integers(0, 5)}
        for i, (s, sec) in enumerate(zip(SYMBOLS, sectors)) for d in recordings
    ])
    quarters = pd.date_range("2019-03-31", "2021-03-31", freq="QE")
    earnings = []
    for s in SYMBOLS:
        for q in quarters:
            reported = q + pd.Timedelta(days=int(rng.integers(25, 40)))
            while reported.weekday() >= 5:
                reported += pd.Timedelta(days=1)
            when = "post-market" if rng.random() < 0.5 else "pre-market"
            date = reported + pd.offsets.BDay(1) if when == "post-market" else reported
            eps, est = rng.normal(1, 0.3), rng.normal(1, 0.3)
            earnings.append({"symbol": s, "fiscal_date_ending": q, "reported_date": reported, "report_time": when, "date": date,
                             "reported_eps": eps, "estimated_eps": est, "surprise": eps - est, "surprise_pct": 100 * (eps - est) / abs(est)})
    calendar = pd.DataFrame([{"symbol": e["symbol"], "date": e["reported_date"] - pd.Timedelta(days=30), "report_date": e["reported_date"],
                              "fiscal_date_ending": e["fiscal_date_ending"], "estimate": e["estimated_eps"]} for e in earnings])
    days = pd.bdate_range("2019-01-01", "2021-06-30")
    rows = [pd.DataFrame({"indicator": name, "period": days, "date": days + pd.offsets.BDay(1),
                          "value": base + np.cumsum(rng.normal(0, 0.03, len(days)))})
            for name, base in (("treasury_3m", 1.0), ("treasury_2y", 1.5), ("treasury_10y", 2.0), ("fed_funds", 1.0))]
    months = pd.date_range("2018-01-01", "2021-05-01", freq="MS")
    rows.append(pd.DataFrame({"indicator": "cpi", "period": months, "date": months + pd.offsets.MonthEnd(1) + pd.Timedelta(days=15),
                              "value": 250 * np.exp(np.cumsum(rng.normal(0.002, 0.002, len(months))))}))
    rows.append(pd.DataFrame({"indicator": "unemployment", "period": months, "date": months + pd.offsets.MonthEnd(1) + pd.Timedelta(days=7),
                              "value": 4 + np.cumsum(rng.normal(0, 0.1, len(months)))}))
    return FundamentalInputs(overview, pd.DataFrame(earnings), calendar, pd.concat(rows, ignore_index=True))


@pytest.fixture(scope="module")
def bars():
    return make_bars(symbols=SYMBOLS, start="2019-06-03", end="2021-06-30")


def _scrambled(inputs: FundamentalInputs, cutoff: pd.Timestamp, seed: int = 1) -> FundamentalInputs:
    """Every value published (``date``) after the cut-off replaced by noise; the rest untouched."""
    rng = np.random.default_rng(seed)

    def scramble(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        frame = frame.copy()
        late = pd.to_datetime(frame["date"]) > cutoff
        for c in columns:
            if c != "report_date":
                frame[c] = frame[c].astype(float)
            frame.loc[late, c] = rng.normal(0, 100, int(late.sum())) if c != "report_date" else frame.loc[late, c] - pd.Timedelta(days=3)
        return frame

    numbers = ["shares_outstanding", "analyst_target_price", "analyst_strong_buy", "analyst_buy", "analyst_hold",
               "analyst_sell", "analyst_strong_sell"]
    return FundamentalInputs(
        scramble(inputs.overview, numbers),
        scramble(inputs.earnings, ["reported_eps", "estimated_eps", "surprise", "surprise_pct"]),
        scramble(inputs.calendar, ["estimate", "report_date"]),
        scramble(inputs.macro, ["value"]),
    )


def test_scrambling_values_published_after_a_cutoff_changes_no_feature_before_it(bars):
    inputs = _inputs()
    cutoff = pd.Timestamp("2020-10-15")
    before = compute_features(bars, fundamentals=inputs, benchmark=None)
    after = compute_features(bars, fundamentals=_scrambled(inputs, cutoff), benchmark=None)
    early = (before["date"] <= cutoff).to_numpy()
    pd.testing.assert_frame_equal(before.loc[early, JOINED], after.loc[early, JOINED])
    late = ~early
    changed = [c for c in JOINED if not before.loc[late, c].equals(after.loc[late, c])]
    assert {"earn_surprise_pct", "macro_curve_10y_2y", "macro_cpi_yoy", "log_market_cap", "analyst_upside"} <= set(changed)


def test_an_after_close_report_lands_on_the_next_session_and_a_pre_market_one_the_same_session(bars):
    overview = pd.DataFrame(columns=list(_inputs().overview.columns))
    earnings = pd.DataFrame([
        {"symbol": "AAA", "fiscal_date_ending": pd.Timestamp("2020-03-31"), "reported_date": pd.Timestamp("2020-04-28"),
         "report_time": "post-market", "date": pd.Timestamp("2020-04-29"), "reported_eps": 1.2, "estimated_eps": 1.0,
         "surprise": 0.2, "surprise_pct": 20.0},
        {"symbol": "BBB", "fiscal_date_ending": pd.Timestamp("2020-03-31"), "reported_date": pd.Timestamp("2020-04-28"),
         "report_time": "pre-market", "date": pd.Timestamp("2020-04-28"), "reported_eps": 0.8, "estimated_eps": 1.0,
         "surprise": -0.2, "surprise_pct": -20.0},
    ])
    out = compute_features(bars, fundamentals=FundamentalInputs(overview=overview, earnings=earnings), benchmark=None)
    at = out.set_index(["symbol", "date"])
    assert np.isnan(at.loc[("AAA", pd.Timestamp("2020-04-28")), "earn_surprise_pct"])
    assert at.loc[("AAA", pd.Timestamp("2020-04-29")), "earn_surprise_pct"] == 20.0
    assert at.loc[("AAA", pd.Timestamp("2020-04-29")), "earn_sessions_since"] == 0
    assert at.loc[("BBB", pd.Timestamp("2020-04-28")), "earn_surprise_pct"] == -20.0
    assert np.isnan(at.loc[("BBB", pd.Timestamp("2020-04-27")), "earn_drift_window"])  # no report known yet
    drift = at.loc["BBB"]["earn_drift_signal"].loc["2020-04-28":]
    assert (drift.iloc[: fundamental.POST_EARNINGS_DRIFT_SESSIONS] == -1).all()
    assert (drift.iloc[fundamental.POST_EARNINGS_DRIFT_SESSIONS:] == 0).all()


def test_snapshot_fields_never_appear_before_their_first_recording(bars):
    inputs = _inputs()
    out = compute_features(bars, fundamentals=inputs, benchmark=None)
    first = pd.Timestamp("2020-06-01")
    snapshot = ["log_market_cap", "turnover_20", "analyst_upside", "analyst_score"]
    assert out.loc[out["date"] < first, snapshot].isna().all().all()
    assert out.loc[out["date"] >= pd.Timestamp("2020-07-01"), snapshot].notna().all().all()
    # The classification is a static attribute: the newest recording's codes on every row (documented exception).
    assert out["sector_code"].notna().all()
    assert out.groupby("symbol")["sector_code"].nunique().eq(1).all()
    assert out.loc[out["symbol"] == "AAA", "sector_code"].iloc[0] == fundamental.category_code("TECHNOLOGY")


def test_macro_values_are_known_from_their_publication_and_a_missing_month_stays_null(bars):
    inputs = _inputs()
    macro_rows = inputs.macro
    # CPI for 2020-04 is dropped (a "." month): the yoy of 2020-04 and of 2021-04 (its base) cannot be computed.
    missing = (macro_rows["indicator"] == "cpi") & (macro_rows["period"] == pd.Timestamp("2020-04-01"))
    out = compute_features(bars, fundamentals=FundamentalInputs(macro=macro_rows[~missing]), benchmark=None)
    day = out[out["symbol"] == "AAA"].set_index("date")
    # CPI of March 2020 is published 2020-04-15: rows before see February's.
    cpi = macro_rows[macro_rows["indicator"] == "cpi"].set_index("period")["value"]
    february = np.log(cpi[pd.Timestamp("2020-02-01")] / cpi[pd.Timestamp("2019-02-01")])
    march = np.log(cpi[pd.Timestamp("2020-03-01")] / cpi[pd.Timestamp("2019-03-01")])
    assert day.loc["2020-04-14", "macro_cpi_yoy"] == pytest.approx(february)
    assert day.loc["2020-04-15", "macro_cpi_yoy"] == pytest.approx(march)
    # 2021-04's base month is missing: once 2021-04 is the newest published month, its change is NULL, not filled.
    assert np.isnan(day.loc["2021-05-17", "macro_cpi_yoy"])
    assert out.groupby("date")["macro_curve_10y_2y"].nunique().max() == 1  # one value per date for every symbol


def test_without_inputs_the_new_features_are_null_and_reported_as_sparse(bars):
    out = compute_features(bars, benchmark=None)
    assert out[JOINED].isna().all().all()
    assert set(JOINED) <= sparse_features()


def test_sector_features_compare_with_the_other_symbols_of_the_sector(bars):
    inputs = _inputs()
    out = compute_features(bars, fundamentals=inputs, benchmark=None)
    day = out[out["date"] == pd.Timestamp("2021-02-01")].set_index("symbol")
    tech_other = day.loc["BBB", "logret_20"]
    assert day.loc["AAA", "sector_rel_ret_20"] == pytest.approx(day.loc["AAA", "logret_20"] - tech_other)
    fin = day.loc[["DDD", "EEE"], "logret_20"].mean()
    assert day.loc["CCC", "sector_rel_ret_20"] == pytest.approx(day.loc["CCC", "logret_20"] - fin)
    assert sorted(day["sector_mom_rank"].unique()) == [0.5, 1.0]
    assert out["beta_sector_60"].notna().sum() > 0.5 * len(out)
