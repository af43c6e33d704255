"""The point-in-time frames the fundamental, earnings, sector and macro features read (the contract between the
Alpha Vantage data layer and ``ibf_core.features.fundamental`` / ``ibf_core.features.macro``).

Every frame carries ``date``: the first NYSE session whose *row* may use the value, i.e. the first session whose
close comes after the value was published (a report before the open counts for that session; after the close, or
at an unknown time, for the next one). A feature row of session d reads only values with ``date <= d``.

- ``overview``: ``symbol, date, asset_type, exchange, sector, industry`` + the snapshot fields
  ``shares_outstanding, analyst_target_price, analyst_strong_buy, analyst_buy, analyst_hold, analyst_sell,
  analyst_strong_sell``. One row per symbol and recording session (``fundamentals`` table). Snapshot fields are
  what Alpha Vantage says *today*: they exist from the first recording on and are never back-filled. The
  classification (sector, industry) is read from the newest recording and applied to the whole history
  (classifications rarely change; documented in docs/models-and-evaluation.md, Fundamentals).
- ``earnings``: ``symbol, fiscal_date_ending, reported_date, report_time, date, reported_eps, estimated_eps,
  surprise, surprise_pct`` (``earnings`` table; ``report_time`` pre-market, post-market or '').
- ``calendar``: ``symbol, date, report_date, fiscal_date_ending, estimate``: announcements scheduled ahead
  (``EARNINGS_CALENDAR``) as recorded on ``date`` (``earnings_calendar`` table).
- ``macro``: ``indicator, period, date, value`` (``macro_indicators`` table): ``period`` is the date Alpha
  Vantage labels the value with, ``date`` the first session after its publication (see ``RELEASE_LAG``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

OVERVIEW_COLUMNS = (
    "symbol", "date", "asset_type", "exchange", "sector", "industry", "shares_outstanding", "analyst_target_price",
    "analyst_strong_buy", "analyst_buy", "analyst_hold", "analyst_sell", "analyst_strong_sell",
)  # fmt: skip
SNAPSHOT_COLUMNS = OVERVIEW_COLUMNS[6:]
EARNINGS_COLUMNS = (
    "symbol", "fiscal_date_ending", "reported_date", "report_time", "date", "reported_eps", "estimated_eps",
    "surprise", "surprise_pct",
)  # fmt: skip
CALENDAR_COLUMNS = ("symbol", "date", "report_date", "fiscal_date_ending", "estimate")
MACRO_COLUMNS = ("indicator", "period", "date", "value")
# Indicators: name -> (Alpha Vantage function, extra parameters).
MACRO_INDICATORS: dict[str, tuple[str, dict[str, str]]] = {
    "treasury_3m": ("TREASURY_YIELD", {"interval": "daily", "maturity": "3month"}),
    "treasury_2y": ("TREASURY_YIELD", {"interval": "daily", "maturity": "2year"}),
    "treasury_10y": ("TREASURY_YIELD", {"interval": "daily", "maturity": "10year"}),
    "fed_funds": ("FEDERAL_FUNDS_RATE", {"interval": "daily"}),
    "cpi": ("CPI", {"interval": "monthly"}),
    "unemployment": ("UNEMPLOYMENT", {}),
}


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c in ("date", "period", "fiscal_date_ending", "reported_date", "report_date") else object) for c in columns})


@dataclass(frozen=True)
class FundamentalInputs:
    """What the features read besides bars and news; every frame may be empty (its features are then NULL)."""

    overview: pd.DataFrame = field(default_factory=lambda: _empty(OVERVIEW_COLUMNS))
    earnings: pd.DataFrame = field(default_factory=lambda: _empty(EARNINGS_COLUMNS))
    calendar: pd.DataFrame = field(default_factory=lambda: _empty(CALENDAR_COLUMNS))
    macro: pd.DataFrame = field(default_factory=lambda: _empty(MACRO_COLUMNS))

    @property
    def empty(self) -> bool:
        return all(f.empty for f in (self.overview, self.earnings, self.calendar, self.macro))
