"""Real vendor files load: every repair, drop, fill and missing session is a row of ``bar_issues``."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from helpers.bars import make_bars
from ibf_core.market.checks import BarPolicy, check_bars
from ibf_core.market.issues import BAR_ISSUES, IssueSummary
from ibf_core.market.bars import BarsValidationError
from ibf_core.market.ingest import load_market_bars
from ibf_core.market.quality import check_ohlc_consistency
from ibf_core.settings import load_settings
from ibf_core.sources import make_source
from ibf_core.sources.csv import CsvSource
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import Warehouse

Q1 = (dt.date(2021, 1, 1), dt.date(2021, 3, 31))
REPAIR, STRICT = BarPolicy(mode="repair"), BarPolicy(mode="strict")


def glitchy_bars() -> tuple[pd.DataFrame, dict[str, int]]:
    """make_bars() with one glitch of each kind on AAA; returns the frame and the row index of each glitch."""
    frame = make_bars()
    at = {"small_open": 3, "large_close": 5, "high_low": 7, "nonpositive": 9, "duplicate": 11}
    frame.loc[at["small_open"], "open"] = frame.loc[at["small_open"], "high"] * 1.003  # 0.3% above high
    frame.loc[at["large_close"], "close"] = frame.loc[at["large_close"], "high"] * 1.08  # 8% above high
    frame.loc[at["high_low"], "low"] = frame.loc[at["high_low"], "high"] * 1.05  # high 5% below low
    frame.loc[at["nonpositive"], "close"] = 0.0
    later = frame.loc[[at["duplicate"]]].assign(close=frame.loc[at["duplicate"], "close"] * 1.001)
    return pd.concat([frame, later], ignore_index=True), at


def write(path, frame):
    frame.to_csv(path, index=False)
    return path


def test_each_glitch_is_repaired_or_dropped_and_recorded(tmp_path):
    frame, at = glitchy_bars()
    warehouse = Warehouse(tmp_path / "home")
    result = load_market_bars(CsvSource(write(tmp_path / "v.csv", frame), REPAIR), warehouse, ["AAA", "BBB"], *Q1)
    issues = warehouse.query("SELECT * FROM bar_issues WHERE rule <> 'missing_session' ORDER BY date")
    day = {k: pd.Timestamp(frame.loc[i, "date"]) for k, i in at.items()}
    got = {(r.date, r.rule, r.action) for r in issues.itertuples()}
    assert got == {
        (day["small_open"], "open_outside_range", "repaired"),
        (day["large_close"], "close_outside_range", "dropped"),
        (day["high_low"], "high_below_low", "dropped"),
        (day["nonpositive"], "nonpositive_price", "dropped"),
        (day["duplicate"], "duplicate_date", "dropped"),
    }
    assert set(issues["symbol"]) == {"AAA"} and set(issues["source"]) == {"csv"}
    assert issues["recorded_at"].notna().all()
    bars = warehouse.read(MARKET_BARS, ["AAA"])
    stored = bars.set_index("date")
    # the small glitch: high widened to the open, old and new value in the detail
    repaired = stored.loc[day["small_open"]]
    assert repaired["high"] == pytest.approx(frame.loc[at["small_open"], "open"])
    detail = issues.loc[issues.rule == "open_outside_range", "detail"].iloc[0]
    assert f"high {frame.loc[at['small_open'], 'high']:.6g} -> {frame.loc[at['small_open'], 'open']:.6g}" in detail
    assert "v.csv row 5" in detail
    # dropped rows are gone; the duplicate kept the last copy
    for kind in ("large_close", "high_low", "nonpositive"):
        assert day[kind] not in stored.index
    assert stored.loc[day["duplicate"], "close"] == pytest.approx(frame["close"].iloc[-1])
    # the stored (repaired) rows are consistent; the check says what it took
    check = check_ohlc_consistency(bars, result.issues)
    assert check.passed and check.details["rows_repaired"] == 1 and check.details["rows_dropped"] == 4
    assert "1 row repaired, 4 dropped" in check.summary and "see bar_issues" in check.summary
    # the three dropped rows are gaps: recorded as missing sessions of AAA
    missing = warehouse.query("SELECT date FROM bar_issues WHERE rule = 'missing_session'")["date"]
    assert set(pd.to_datetime(missing)) == {day["large_close"], day["high_low"], day["nonpositive"]}


def test_strict_lists_every_problem_with_counts_and_writes_nothing(tmp_path):
    frame, at = glitchy_bars()
    frame.loc[20, "low"] = frame.loc[20, "high"] * 1.3  # a second high < low
    path = write(tmp_path / "v.csv", frame)
    with pytest.raises(BarsValidationError) as info:
        CsvSource(path, STRICT).read()
    first, *rest = str(info.value).splitlines()
    assert first.startswith(f"{path}: 6 bad rows (IBF_BAR_POLICY=strict rejects the input): ")
    for counted in ("1 zero or negative price", "2 high below low", "1 open outside the high-low range",
                    "1 close outside the high-low range", "1 duplicate (symbol, date)"):
        assert counted in first
    assert rest == [
        "  zero or negative price (1): row 11 (AAA 2021-01-15)",
        "  high below low (2): row 9 (AAA 2021-01-13), row 22 (AAA 2021-02-02)",
        "  open outside the high-low range (1): row 5 (AAA 2021-01-07)",
        "  close outside the high-low range (1): row 7 (AAA 2021-01-11)",
        "  duplicate (symbol, date) (1): row 13 (AAA 2021-01-20)",
    ]
    warehouse = Warehouse(tmp_path / "home")
    with pytest.raises(BarsValidationError):
        load_market_bars(CsvSource(path, STRICT), warehouse, ["AAA"], *Q1)
    assert not (warehouse.lake_dir / "market_bars" / "AAA.parquet").exists()
    assert not (warehouse.lake_dir / "bar_issues" / "AAA.parquet").exists()


def test_the_tolerance_decides_between_repair_and_drop(tmp_path):
    frame, at = glitchy_bars()
    path = write(tmp_path / "v.csv", frame)
    small = pd.Timestamp(frame.loc[at["small_open"], "date"])

    def action(tolerance: float) -> str:
        issues = CsvSource(path, BarPolicy("repair", tolerance)).fetch_checked(["AAA"], *Q1).issues
        return issues.loc[issues.date == small, "action"].item()

    assert action(0.01) == "repaired"
    assert action(0.001) == "dropped"  # 0.3% is more than 0.1%
    assert action(0.1) == "repaired"
    issues = CsvSource(path, BarPolicy("repair", 0.1)).fetch_checked(["AAA"], *Q1).issues
    assert issues.loc[issues.rule == "close_outside_range", "action"].item() == "repaired"  # 8% < 10%


def test_settings_choose_the_policy(monkeypatch, tmp_path):
    frame, _ = glitchy_bars()
    path = write(tmp_path / "v.csv", frame)
    monkeypatch.setenv("IBF_SOURCE", "csv")
    monkeypatch.setenv("IBF_CSV_PATH", str(path))
    assert len(make_source(load_settings()).read().issues) == 5  # repair is the default
    monkeypatch.setenv("IBF_BAR_POLICY", "strict")
    with pytest.raises(BarsValidationError, match="5 bad rows"):
        make_source(load_settings()).read()
    for name, value in (("IBF_BAR_POLICY", "fix"), ("IBF_BAR_REPAIR_TOLERANCE", "-0.1"), ("IBF_CSV_DATE_FORMAT", "%Y")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            load_settings()
        monkeypatch.delenv(name)


def test_missing_sessions_vendor_wide_and_per_symbol(tmp_path):
    frame = make_bars(symbols=("AAA", "BBB", "CCC"))
    vendor_gaps = ["2021-02-03", "2021-03-10"]
    frame = frame[~frame.date.isin(vendor_gaps)]
    frame = frame[~((frame.symbol == "BBB") & (frame.date == "2021-01-20"))]
    warehouse = Warehouse(tmp_path / "home")
    source = CsvSource(write(tmp_path / "v.csv", frame), REPAIR)
    result = load_market_bars(source, warehouse, ["AAA", "BBB", "CCC"], *Q1)
    missing = warehouse.query("SELECT * FROM bar_issues ORDER BY symbol, date")
    assert set(missing["rule"]) == {"missing_session"} and set(missing["action"]) == {"reported"}
    got = {(r.symbol, str(pd.Timestamp(r.date).date())) for r in missing.itertuples()}
    assert got == {(s, d) for s in ("AAA", "BBB", "CCC") for d in vendor_gaps} | {("BBB", "2021-01-20")}
    vendor = missing[missing.date == pd.Timestamp("2021-02-03")]["detail"]
    assert vendor.str.startswith("vendor-wide gap: none of the 3 symbols loaded").all()
    single = missing[missing.date == pd.Timestamp("2021-01-20")]["detail"].item()
    assert single.startswith("2 of the 3 symbols loaded have a bar on this session")
    assert result.summary.missing_sessions == 7
    # loading twice records it once (the slice's issues are replaced, not appended)
    load_market_bars(source, warehouse, ["AAA", "BBB", "CCC"], *Q1)
    assert len(warehouse.query("SELECT * FROM bar_issues")) == 7
    # re-loading February alone keeps January's and March's rows and re-records February's
    load_market_bars(source, warehouse, ["AAA", "BBB", "CCC"], dt.date(2021, 2, 1), dt.date(2021, 2, 28))
    again = warehouse.query("SELECT symbol, date, detail FROM bar_issues ORDER BY symbol, date")
    assert len(again) == 7 and again["detail"].tolist() == missing["detail"].tolist()


def test_a_daily_load_rewrites_only_the_issue_files_it_changes(tmp_path):
    frame = make_bars(symbols=("AAA", "BBB", "CCC"))
    frame = frame[frame.date != "2021-02-03"]  # a vendor-wide gap: every symbol has an issue file
    last = pd.Timestamp(frame["date"].max())
    glitch = frame.index[(frame.symbol == "BBB") & (pd.to_datetime(frame.date) == last)][0]
    frame.loc[glitch, "open"] = frame.loc[glitch, "high"] * 1.002  # repaired, recorded on the last session
    warehouse = Warehouse(tmp_path / "home")
    source = CsvSource(write(tmp_path / "v.csv", frame), REPAIR)
    symbols = ["AAA", "BBB", "CCC"]
    load_market_bars(source, warehouse, symbols, Q1[0], (last - pd.Timedelta(days=1)).date())
    folder = warehouse.lake_dir / "bar_issues"
    before = {p.name: p.stat().st_ino for p in folder.glob("[A-Z]*.parquet")}
    assert set(before) == {"AAA.parquet", "BBB.parquet", "CCC.parquet"}
    load_market_bars(source, warehouse, symbols, last.date(), last.date())
    after = {p.name: p.stat().st_ino for p in folder.glob("[A-Z]*.parquet")}
    assert after["AAA.parquet"] == before["AAA.parquet"] and after["CCC.parquet"] == before["CCC.parquet"]
    assert after["BBB.parquet"] != before["BBB.parquet"]
    rows = warehouse.query("SELECT symbol, rule FROM bar_issues ORDER BY symbol, rule")
    assert rows.values.tolist() == [["AAA", "missing_session"], ["BBB", "missing_session"],
                                    ["BBB", "open_outside_range"], ["CCC", "missing_session"]]


def test_a_failed_bars_write_leaves_both_tables_as_they_were(tmp_path, monkeypatch):
    frame, _ = glitchy_bars()
    warehouse = Warehouse(tmp_path / "home")
    load_market_bars(CsvSource(write(tmp_path / "v.csv", frame), REPAIR), warehouse, ["AAA", "BBB"], *Q1)
    folders = [warehouse.lake_dir / "market_bars", warehouse.lake_dir / "bar_issues"]
    before = {p: p.read_bytes() for f in folders for p in sorted(f.iterdir()) if p.is_file()}
    changed = make_bars(seed=3)
    changed.loc[4, "open"] = changed.loc[4, "high"] * 1.002

    def broken(*args, **kwargs):
        raise OSError("disk full")

    from ibf_core.storage.warehouse import _LakeTransaction

    monkeypatch.setattr(_LakeTransaction, "replace_slice", broken)  # the bars part of the one write
    with pytest.raises(OSError, match="disk full"):
        load_market_bars(CsvSource(write(tmp_path / "w.csv", changed), REPAIR), warehouse, ["AAA", "BBB"], *Q1)
    after = {p: p.read_bytes() for f in folders for p in sorted(f.iterdir()) if p.is_file()}
    assert after == before  # no issue file swapped in, no temp file left


def test_close_only_file_fills_once_per_symbol_and_column(tmp_path):
    frame = make_bars()[["date", "symbol", "close"]]
    loaded = CsvSource(write(tmp_path / "c.csv", frame), REPAIR).fetch_checked(["AAA", "BBB"], *Q1)
    issues = loaded.issues
    counts = issues.groupby(["symbol", "rule", "action"]).size().to_dict()
    assert counts == {
        (s, r, a): 1
        for s in ("AAA", "BBB")
        for r, a in (("missing_open", "filled"), ("missing_high", "filled"), ("missing_low", "filled"),
                     ("missing_adj_close", "filled"), ("missing_volume", "reported"))
    }
    assert issues["detail"].str.contains("no open column in c.csv|no high column|no low column|no adj_close|no volume").all()
    assert "(61 rows, 2021-01-04..2021-03-31)" in issues["detail"].iloc[0]
    bars = loaded.bars
    assert (bars[["open", "high", "low", "adj_close"]].to_numpy() == bars[["close"]].to_numpy()).all()
    assert bars["volume"].isna().all()
    # a file whose open/high/low are given but all equal to close: loaded as it is, reported once per symbol
    flat = make_bars().assign(open=lambda f: f.close, high=lambda f: f.close, low=lambda f: f.close)
    issues = CsvSource(write(tmp_path / "f.csv", flat), REPAIR).fetch_checked(["AAA", "BBB"], *Q1).issues
    assert issues[["symbol", "rule", "action"]].values.tolist() == [["AAA", "close_only", "reported"], ["BBB", "close_only", "reported"]]


def test_no_volume_empty_volume_or_constant_volume_is_null_never_zero(tmp_path):
    from ibf_core.features.pipeline import compute_features

    base = make_bars(start="2020-01-02", end="2021-03-31")
    files = {
        "absent": base.drop(columns=["volume"]),
        "empty": base.assign(volume=""),
        "constant": base.assign(volume=0),
    }
    for name, frame in files.items():
        loaded = CsvSource(write(tmp_path / f"{name}.csv", frame), STRICT).fetch_checked(["AAA", "BBB"], dt.date(2020, 1, 1), Q1[1])
        assert loaded.bars["volume"].isna().all(), name
        rules = loaded.issues[["symbol", "rule", "action"]].values.tolist()
        rule = "constant_volume" if name == "constant" else "missing_volume"
        assert rules == [["AAA", rule, "reported"], ["BBB", rule, "reported"]], name
    assert check_ohlc_consistency(loaded.bars).passed  # a NULL volume is not an OHLC problem
    features = compute_features(loaded.bars)
    ready = features[~features["warmup"]]
    for column in ("volume_z_20", "obv_flow_20", "cmf_20", "vwap_ratio_20", "amihud_20", "turnover_proxy_20"):
        assert ready[column].isna().all() and not (ready[column] == 0).any(), column
    assert ready["rsi_14"].notna().all()  # price features are untouched


def test_few_identical_volumes_are_kept(tmp_path):
    """A short slice (a halted stock's zero-volume days) is not a close-only export."""
    frame = make_bars(end="2021-01-07").assign(volume=0)
    loaded = CsvSource(write(tmp_path / "v.csv", frame), REPAIR).fetch_checked(["AAA", "BBB"], *Q1)
    assert (loaded.bars["volume"] == 0).all() and loaded.issues.empty


def test_partial_gaps_are_filled_in_repair_and_rejected_in_strict(tmp_path):
    frame = make_bars()
    frame["adj_close"] = (frame["close"] * 0.98).round(4)
    frame.loc[6, ["open", "high", "low", "volume"]] = np.nan
    frame.loc[8, "adj_close"] = np.nan
    path = write(tmp_path / "p.csv", frame)
    with pytest.raises(BarsValidationError) as info:
        CsvSource(path, STRICT).read()
    assert "5 bad rows" not in str(info.value) and "2 bad rows" in str(info.value)
    loaded = CsvSource(path, REPAIR).fetch_checked(["AAA"], *Q1)
    rules = sorted(loaded.issues["rule"])
    assert rules == ["missing_adj_close", "missing_high", "missing_low", "missing_open", "missing_volume"]
    row6 = loaded.bars.set_index("date").loc[pd.Timestamp(frame.loc[6, "date"])]
    assert row6["open"] == row6["high"] == row6["low"] == row6["close"] and np.isnan(row6["volume"])
    row8 = loaded.bars.set_index("date").loc[pd.Timestamp(frame.loc[8, "date"])]
    assert row8["adj_close"] == pytest.approx(row8["close"] * 0.98, rel=1e-4)  # the neighbours' dividend factor


def test_yahoo_folder_one_file_per_symbol(tmp_path):
    folder = tmp_path / "yahoo"
    folder.mkdir()
    raw = make_bars(symbols=("MSFT", "BRK-B"))
    for symbol, group in raw.groupby("symbol"):
        yahoo = group.drop(columns="symbol").rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"})
        yahoo["Adj Close"] = (yahoo["Close"] * 0.99).round(4)
        yahoo = yahoo[["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]].astype(str)
        yahoo.loc[yahoo.index[10], ["Open", "High", "Low", "Close", "Adj Close", "Volume"]] = "null"  # Yahoo's gap
        yahoo.to_csv(folder / f"{symbol}.csv", index=False)
    loaded = CsvSource(folder, REPAIR).fetch_checked(["BRK-B", "MSFT"], *Q1)
    assert loaded.bars.groupby("symbol").size().to_dict() == {"BRK-B": 60, "MSFT": 60}
    assert np.allclose(loaded.bars["adj_close"], (loaded.bars["close"] * 0.99).round(4))
    assert loaded.issues[["rule", "action"]].values.tolist() == [["missing_close", "dropped"]] * 2
    assert loaded.issues["detail"].str.contains(r"BRK-B\.csv row 12|MSFT\.csv row 12").all()
    (folder / "notes (1).csv").write_text("Date,Close\n2021-01-04,1\n")
    with pytest.raises(BarsValidationError, match=r"notes \(1\)\.csv: no symbol column, and the file name 'notes \(1\)'"):
        CsvSource(folder, REPAIR).read()


def test_day_first_dates_need_the_setting_and_are_never_guessed(tmp_path, monkeypatch):
    frame = make_bars()
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y")  # 04/01/2021 is 4 January
    path = write(tmp_path / "eu.csv", frame)
    monkeypatch.setenv("IBF_SOURCE", "csv")
    monkeypatch.setenv("IBF_CSV_PATH", str(path))
    with pytest.raises(BarsValidationError) as info:
        make_source(load_settings()).read()
    assert str(info.value) == (
        f"{path}: unparseable date at row 2 (AAA 04/01/2021), row 3 (AAA 05/01/2021), row 4 (AAA 06/01/2021), "
        "and 119 more: '04/01/2021' is not an ISO date (YYYY-MM-DD); set IBF_CSV_DATE_FORMAT (e.g. %d/%m/%Y) "
        "to read another format"
    )
    monkeypatch.setenv("IBF_CSV_DATE_FORMAT", "%d/%m/%Y")
    bars = make_source(load_settings()).fetch_daily_bars(["AAA", "BBB"], *Q1)
    expected = make_bars()
    assert bars["date"].dt.strftime("%Y-%m-%d").tolist() == expected.sort_values(["symbol", "date"])["date"].tolist()
    # one format for every row: an ISO row in a day-first file is an error, not a guess
    frame.loc[30, "date"] = "2021-02-17"
    write(path, frame)
    with pytest.raises(BarsValidationError, match=r"row 32 \(AAA 2021-02-17\): '2021-02-17' does not match IBF_CSV_DATE_FORMAT='%d/%m/%Y'"):
        make_source(load_settings()).read()


def test_headers_in_any_case_and_a_ticker_column(tmp_path):
    frame = make_bars().rename(columns={"date": " Date", "symbol": "Ticker", "adj_close": "Adj Close", "volume": "VOLUME"})
    frame[" Date"] = frame[" Date"] + " "  # trailing spaces in cells are not an error either
    frame["close"] = frame["close"].astype(str) + "  "
    bars = CsvSource(write(tmp_path / "h.csv", frame), STRICT).fetch_daily_bars(["AAA", "BBB"], *Q1)
    assert len(bars) == len(frame) and list(bars.columns)[:2] == ["symbol", "date"]
    assert bars["close"].tolist() == make_bars().sort_values(["symbol", "date"])["close"].tolist()


def test_issue_summary_line():
    frame, _ = glitchy_bars()
    summary = IssueSummary.of(check_bars(frame.assign(_line=frame.index + 2), "t", REPAIR).issues)
    assert summary.line() == "1 row repaired, 4 dropped, see bar_issues"
    assert summary.by_rule == {"close_outside_range": 1, "duplicate_date": 1, "high_below_low": 1,
                               "nonpositive_price": 1, "open_outside_range": 1}
    assert BAR_ISSUES.column_names == ["symbol", "date", "rule", "action", "detail", "source", "recorded_at"]


def test_a_clean_reload_clears_the_slices_issues(tmp_path):
    frame, _ = glitchy_bars()
    warehouse = Warehouse(tmp_path / "home")
    load_market_bars(CsvSource(write(tmp_path / "v.csv", frame), REPAIR), warehouse, ["AAA", "BBB"], *Q1)
    assert len(warehouse.query("SELECT * FROM bar_issues")) == 8
    load_market_bars(CsvSource(write(tmp_path / "v.csv", make_bars()), REPAIR), warehouse, ["AAA", "BBB"], *Q1)
    assert warehouse.query("SELECT count(*) AS n FROM bar_issues")["n"].item() == 0
    assert not (warehouse.lake_dir / "bar_issues" / "AAA.parquet").exists()


def test_a_policy_built_in_code_is_validated_too():
    with pytest.raises(ValueError, match="repair or strict"):
        BarPolicy(mode="fix")
    with pytest.raises(ValueError, match="tolerance"):
        BarPolicy(tolerance=-0.01)
