import datetime as dt

import dagster as dg
import pytest

from ibf_core.settings import load_settings
from ibf_dagster.partitions import date_key_window, date_partitions, rectangles_from_keys
from ibf_dagster.runner import contiguous_blocks, date_keys_between


def keys(dates, symbols):
    return [dg.MultiPartitionKey({"date": d, "symbol": s}) for d in dates for s in symbols]


def test_daily_partitions_are_nyse_sessions():
    s = load_settings(date_partitions="day", history_start=dt.date(2012, 11, 20))
    part = date_partitions(s)
    got = [k for k in part.get_partition_keys() if k <= "2012-12-31"]
    assert "2012-11-22" not in got  # Thanksgiving
    assert "2012-10-29" not in got and "2012-11-23" in got
    assert "2012-12-25" not in got and "2012-12-24" in got
    assert len(got) == 28


def test_month_and_year_windows():
    month = load_settings(date_partitions="month")
    assert date_key_window("2012-02", month) == (dt.date(2012, 2, 1), dt.date(2012, 2, 29))
    year = load_settings(date_partitions="year")
    assert date_key_window("2012", year) == (dt.date(2012, 1, 1), dt.date(2012, 12, 31))
    assert date_keys_between(month, dt.date(2012, 1, 3), dt.date(2012, 3, 5)) == ["2012-01", "2012-02", "2012-03"]
    assert date_keys_between(year, dt.date(2011, 6, 1), dt.date(2012, 1, 1)) == ["2011", "2012"]


def test_rectangles_collapse_contiguous_keys_and_split_gaps():
    s = load_settings(date_partitions="month")
    rects = rectangles_from_keys(keys(["2012-01", "2012-02", "2012-03"], ["AAPL", "MSFT"]), s)
    assert [(r.symbols, r.start, r.end) for r in rects] == [(("AAPL", "MSFT"), dt.date(2012, 1, 1), dt.date(2012, 3, 31))]
    gap = rectangles_from_keys(keys(["2012-01", "2012-03"], ["AAPL"]), s)
    assert [(r.start, r.end) for r in gap] == [(dt.date(2012, 1, 1), dt.date(2012, 1, 31)), (dt.date(2012, 3, 1), dt.date(2012, 3, 31))]
    day = load_settings(date_partitions="day")
    # Friday and the following Tuesday after a Monday holiday have no session between them: one window
    weekend = rectangles_from_keys(keys(["2012-01-13", "2012-01-17"], ["IBM"]), day)
    assert [(r.start, r.end) for r in weekend] == [(dt.date(2012, 1, 13), dt.date(2012, 1, 17))]


def test_symbol_blocks_follow_partition_order():
    assert contiguous_blocks(["AAPL", "GOOG", "IBM", "MSFT"], ["AAPL", "MSFT"]) == [["AAPL"], ["MSFT"]]
    assert contiguous_blocks(["AAPL", "GOOG", "IBM", "MSFT"], ["GOOG", "IBM"]) == [["GOOG", "IBM"]]


def test_dates_outside_history_are_an_error():
    from ibf_dagster.runner import BackfillError

    with pytest.raises(BackfillError, match="no date partitions"):
        date_keys_between(load_settings(), dt.date(1990, 1, 1), dt.date(1990, 12, 31))
