"""Which model an origin uses, and when models are trained: the rules production and the backtest share."""

import datetime as dt
from dataclasses import dataclass

import pytest

from ibf_core.models import ModelLoadError
from ibf_core.models.inference import origins_by_version
from ibf_core.models.registry import newest_before
from ibf_core.models.schedule import latest_weekly_cutoff, weekly_cutoffs

D = dt.date


@dataclass(frozen=True)
class Version:
    version: str
    cutoff: dt.date


VERSIONS = [Version("1", D(2012, 6, 29)), Version("2", D(2012, 9, 28))]


def test_newest_before_is_strictly_before_the_origin():
    assert newest_before(VERSIONS, D(2012, 6, 29)) is None  # trained on the origin's own close: not eligible
    assert newest_before(VERSIONS, D(2012, 7, 2)).version == "1"
    assert newest_before(VERSIONS, D(2012, 9, 28)).version == "1"
    assert newest_before(VERSIONS, D(2012, 10, 1)).version == "2"


def test_a_month_of_origins_can_span_two_versions_and_an_early_origin_is_named():
    days = [D(2012, 9, 27), D(2012, 9, 28), D(2012, 10, 1), D(2012, 10, 2)]
    assert origins_by_version(days, VERSIONS) == {"1": days[:2], "2": days[2:]}
    with pytest.raises(ModelLoadError, match="2012-06-29"):
        origins_by_version([D(2012, 6, 29)], VERSIONS)


def test_weekly_cutoffs_are_each_weeks_last_session():
    # 2012-04-06 is Good Friday (closed): that week ends on Thursday the 5th
    assert weekly_cutoffs(D(2012, 4, 2), D(2012, 4, 20)) == ["2012-04-05", "2012-04-13", "2012-04-20"]


def test_latest_weekly_cutoff_counts_only_complete_weeks():
    assert latest_weekly_cutoff(D(2012, 4, 18)) == "2012-04-13"  # a Wednesday: this week is not over
    assert latest_weekly_cutoff(D(2012, 4, 20)) == "2012-04-20"  # the Friday close completes the week
    assert latest_weekly_cutoff(D(2012, 4, 9)) == "2012-04-05"  # Monday after a Thursday-ending week
