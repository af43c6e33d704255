"""The NYSE calendar is built once a day per IBF_HOME (~1 s) and loaded from its cache file in other processes."""

import logging
import pickle

import pandas as pd
import pytest

from ibf_core import calendar


@pytest.fixture
def fresh_calendar(ibf_home):
    calendar._calendar.cache_clear()
    yield ibf_home / "cache" / "calendar"
    calendar._calendar.cache_clear()


def test_the_calendar_is_cached_for_the_next_process_and_loads_equal(fresh_calendar):
    built = calendar._calendar()
    files = list(fresh_calendar.glob("XNYS-*.pickle"))
    assert len(files) == 1 and str(pd.Timestamp.today().year + 1) in files[0].name
    stale = fresh_calendar / "XNYS-0.0-1990-01-02-2000-01-01.pickle"
    stale.write_bytes(b"old")
    calendar._calendar.cache_clear()
    loaded = calendar._calendar()
    assert loaded is not built and loaded.sessions.equals(built.sessions)
    pd.testing.assert_frame_equal(loaded.schedule, built.schedule)
    assert stale.exists()  # only a build replaces files; a load leaves the folder as it is


def test_an_unreadable_cache_file_is_rebuilt_with_a_warning(fresh_calendar, caplog):
    calendar._calendar()
    (path,) = fresh_calendar.glob("XNYS-*.pickle")
    path.write_bytes(b"truncated")
    calendar._calendar.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ibf_core.calendar"):
        rebuilt = calendar._calendar()
    assert any("unreadable" in r.message and path.name in r.message for r in caplog.records)
    assert pickle.loads(path.read_bytes()).sessions.equals(rebuilt.sessions)
