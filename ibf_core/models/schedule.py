"""When models are trained: the regular weekly cadence (drift-triggered retrains add their own cut-offs).

Weekly, on the last session of each week: a global model over the universe on a 2-core CPU trains in minutes,
daily refits would mostly re-learn the same multi-year history, and a week bounds the staleness of the newest
data a forecast's model has seen to 5 sessions.
"""

from __future__ import annotations

import datetime as dt

from ibf_core.calendar import week_end_sessions


def weekly_cutoffs(start: dt.date, end: dt.date) -> list[str]:
    """The regular training cut-offs in [start, end]: the last NYSE session of every week (ISO dates)."""
    return [d.isoformat() for d in week_end_sessions(start, end)]


def latest_weekly_cutoff(today: dt.date) -> str | None:
    """The cut-off of the newest complete week at ``today`` (the latest complete session), or None.

    The current week counts as complete only when ``today`` is its Friday (a holiday-shortened week whose last
    session is a Thursday is complete once the following week starts).
    """
    week_ends = week_end_sessions(today - dt.timedelta(days=14), today)
    complete = [d for d in week_ends if d < today or d.weekday() == 4]
    return complete[-1].isoformat() if complete else None
