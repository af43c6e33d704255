import numpy as np
import pandas as pd
import pytest

from helpers.bars import make_bars
from ibf_core.market.checks import BarPolicy
from ibf_core.market.bars import BarsValidationError, split_adjust, split_events
from ibf_core.market.checks import validate_bars
from ibf_core.sources.csv import CsvSource, read_bars_path
from ibf_core.sources.errors import SourceError, UnknownSymbolError
from ibf_core.sources.sample import SampleSource


def write_csv(path, frame):
    frame.to_csv(path, index=False)
    return path


def test_valid_csv_round_trip(tmp_path):
    raw = make_bars()
    bars = CsvSource(write_csv(tmp_path / "bars.csv", raw)).fetch_daily_bars(["AAA", "BBB"], pd.Timestamp("2021-01-01").date(), pd.Timestamp("2021-12-31").date())
    assert list(bars.columns) == ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]
    assert len(bars) == len(raw)
    assert np.allclose(bars.loc[bars.symbol == "AAA", "close"], raw.loc[raw.symbol == "AAA", "close"])


def test_parquet_and_folder_of_files(tmp_path):
    raw = make_bars()
    raw[raw.symbol == "AAA"].to_parquet(tmp_path / "a.parquet")
    write_csv(tmp_path / "b.csv", raw[raw.symbol == "BBB"].drop(columns="adj_close"))
    bars = read_bars_path(tmp_path)
    assert set(bars.symbol) == {"AAA", "BBB"}
    bbb = bars[bars.symbol == "BBB"]
    assert (bbb.adj_close == bbb.close).all()  # adj_close defaults to close when the file has none


JAN, DEC = pd.Timestamp("2021-01-01").date(), pd.Timestamp("2021-12-31").date()
STRICT_POLICY, REPAIR_POLICY = BarPolicy(mode="strict"), BarPolicy(mode="repair")


@pytest.mark.parametrize("policy", [STRICT_POLICY, REPAIR_POLICY], ids=["strict", "repair"])
@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda f: f.drop(columns=["close"]), "missing column(s) close"),
        (lambda f: f.assign(close=f.close.astype(str)).pipe(lambda g: g.assign(close=g.close.where(g.index != 5, "abc"))), "non-numeric value in column 'close' at row 7"),
        (lambda f: f.assign(date=f.date.where(f.index != 1, "31/31/2021")), "unparseable date at row 3"),
        (lambda f: f.assign(symbol=f.symbol.where(f.index != 0, "BAD|X")), "invalid symbol at row 2"),
    ],
)
def test_format_errors_stop_the_load_in_both_modes(tmp_path, mutate, message, policy):
    path = write_csv(tmp_path / "bad.csv", mutate(make_bars()))
    with pytest.raises(BarsValidationError) as info:
        CsvSource(path, policy).fetch_daily_bars(["AAA"], JAN, DEC)
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


# (mutation, strict message, rule recorded in repair mode, its action, index of the row concerned)
GLITCHES = [
    (lambda f: f.assign(open=f.open.where(f.index != 3, -1.0)), "zero or negative price at row 5", "nonpositive_price", "dropped", 3),
    (lambda f: f.assign(low=f.low.where(f.index != 4, f.high * 2)), "high below low at row 6", "high_below_low", "dropped", 4),
    (lambda f: pd.concat([f, f.iloc[[2]]]), "duplicate (symbol, date) at row 4", "duplicate_date", "dropped", 2),
    (lambda f: f.assign(date=f.date.where(f.index != 0, "2021-01-02")), "not an NYSE trading day at row 2", "not_a_session", "dropped", 0),
    (lambda f: f.assign(date=f.date.where(f.index != 0, "2021-01-18")), "not an NYSE trading day at row 2", "not_a_session", "dropped", 0),  # MLK day
    (lambda f: f.assign(volume=f.volume.astype(float).where(f.index != 9, np.nan)), "missing value in column 'volume' at row 11", "missing_volume", "reported", 9),
]


@pytest.mark.parametrize("mutate,message,rule,action,row", GLITCHES)
def test_strict_rejects_a_bad_row_naming_it(tmp_path, mutate, message, rule, action, row):
    path = write_csv(tmp_path / "bad.csv", mutate(make_bars()))
    with pytest.raises(BarsValidationError) as info:
        CsvSource(path, STRICT_POLICY).fetch_daily_bars(["AAA"], JAN, DEC)
    text = str(info.value)
    assert str(path) in text and message in text and "1 bad row" in text and "IBF_BAR_POLICY=strict" in text
    assert "\n" not in text


@pytest.mark.parametrize("mutate,message,rule,action,row", GLITCHES)
def test_repair_loads_the_rest_and_records_the_row(tmp_path, mutate, message, rule, action, row):
    frame = mutate(make_bars())
    path = write_csv(tmp_path / "bad.csv", frame)
    loaded = CsvSource(path, REPAIR_POLICY).fetch_checked(["AAA", "BBB"], JAN, DEC)
    issues = loaded.issues
    assert issues[["rule", "action"]].values.tolist() == [[rule, action]]
    day = pd.Timestamp(frame.iloc[row]["date"])
    assert issues["date"].iloc[0] == day and issues["symbol"].iloc[0] == "AAA"
    stored = loaded.bars[(loaded.bars.symbol == "AAA") & (loaded.bars.date == day)]
    if rule == "duplicate_date":  # the last copy is kept, the earlier one dropped
        assert len(stored) == 1 and "row 4" in issues["detail"].iloc[0] and "is kept" in issues["detail"].iloc[0]
    elif rule == "missing_volume":  # the row stays, its volume NULL (never 0)
        assert len(stored) == 1 and stored["volume"].isna().all()
    else:
        assert stored.empty
    assert len(loaded.bars) == len(make_bars()) - (action == "dropped" and rule != "duplicate_date")
    assert "bad.csv" in issues["detail"].iloc[0]


def test_unknown_symbol_and_missing_file(tmp_path):
    path = write_csv(tmp_path / "bars.csv", make_bars())
    with pytest.raises(UnknownSymbolError, match="ZZZ"):
        CsvSource(path).fetch_daily_bars(["AAA", "ZZZ"], pd.Timestamp("2021-01-01").date(), pd.Timestamp("2021-12-31").date())
    with pytest.raises(SourceError, match="no such file"):
        CsvSource(tmp_path / "nope.csv").fetch_daily_bars(["AAA"], pd.Timestamp("2021-01-01").date(), pd.Timestamp("2021-12-31").date())


def test_two_for_one_split_is_not_a_minus_fifty_percent_return():
    raw = make_bars(symbols=("AAA",))
    split_at = 30
    raw["adj_close"] = raw["close"] / 2  # the adjusted close is continuous, on the post-split scale
    raw.loc[split_at:, ["open", "high", "low", "close"]] /= 2  # unadjusted prices halve on the split day
    raw.loc[split_at:, "volume"] *= 2
    bars = split_adjust(validate_bars(raw, "test"))
    events = split_events(validate_bars(raw, "test"))
    assert events.ratio.tolist() == [2.0]
    returns = np.log(bars.close).diff().abs()
    assert returns.max() < 0.1
    assert bars.volume.iloc[split_at - 1] == raw.volume.iloc[split_at - 1] * 2


def test_sample_source_is_real_and_split_adjusted():
    start, end = pd.Timestamp("2000-01-01").date(), pd.Timestamp("2013-12-31").date()
    bars = SampleSource().fetch_daily_bars(["AAPL", "GOOG", "IBM", "MSFT"], start, end)
    assert bars.groupby("symbol").size().to_dict() == {"AAPL": 3270, "GOOG": 2148, "IBM": 3270, "MSFT": 3270}
    logret = np.log(bars.close).groupby(bars.symbol).diff()
    aapl = bars.assign(r=logret).set_index(["symbol", "date"])
    # AAPL's 2-for-1 splits (2000-06-21, 2005-02-28) and MSFT's (2003-02-18) are not returns
    for symbol, day in [("AAPL", "2000-06-21"), ("AAPL", "2005-02-28"), ("MSFT", "2003-02-18")]:
        assert abs(aapl.loc[(symbol, pd.Timestamp(day)), "r"]) < 0.1
    # the real 2000-09-29 AAPL crash stays (it is a return, not a split)
    assert aapl.loc[("AAPL", pd.Timestamp("2000-09-29")), "r"] < -0.5
    goog_ipo = bars[(bars.symbol == "GOOG")].iloc[0]
    assert goog_ipo.volume == pytest.approx(22.3e6, rel=0.01)  # volume matches the unadjusted prices
    with pytest.raises(UnknownSymbolError, match="TSLA"):
        SampleSource().fetch_daily_bars(["TSLA"], start, end)


def test_a_file_is_parsed_once_until_it_changes(tmp_path):
    path = tmp_path / "bars.csv"
    make_bars().to_csv(path, index=False)
    source = CsvSource(path)
    first = source.read()
    assert source.read() is first  # the CLI's check and the run's step share one parse
    assert CsvSource(path, BarPolicy(mode="strict")).read() is not first  # another policy, another reading
    edited = make_bars(seed=5)
    edited.to_csv(path, index=False)
    again = source.read()
    assert again is not first
    assert np.allclose(again.bars["close"].to_numpy(), validate_bars(edited, "t")["close"].to_numpy())
