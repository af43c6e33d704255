"""Forecasts for a symbol x date rectangle from the registered models: the ``predictions`` asset's logic.

Each origin uses the newest registered version whose cut-off is strictly before it (``newest_before``), so a
month can span two versions. Every forecastable symbol of the universe is predicted, so ranks are over the
universe; only the rectangle's symbols are returned.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ibf_core.calendar import lookback_start
from ibf_core.features.table import features_spec
from ibf_core.models import HORIZONS, ModelDataError, ModelLoadError
from ibf_core.models.bundle import ModelBundle
from ibf_core.models.inputs import load_panel
from ibf_core.models.predict import forecast, predictions_table
from ibf_core.models.registry import RegisteredModel, newest_before
from ibf_core.storage.tables import PREDICTIONS


@dataclass
class RectanglePredictions:
    """What ``predict_rectangle`` produced, with what a check needs to judge it."""

    frame: pd.DataFrame  # PREDICTIONS rows of the rectangle's symbols
    expected: set[tuple[str, pd.Timestamp]] = field(default_factory=set)  # (symbol, origin) pairs that need rows
    versions: dict[str, str] = field(default_factory=dict)  # model version -> its cut-off (ISO)
    unranked: dict[str, str] = field(default_factory=dict)  # universe symbols left out of the ranks, with why
    forecast_origins: int = 0  # origin sessions forecast afresh
    carried_origins: int = 0  # origin sessions whose stored rows were kept (same inputs digest)
    stored_rows: int = 0  # the rectangle's rows before

    @property
    def changed(self) -> bool:
        """Whether the rectangle's stored rows must be rewritten (something forecast, or stored rows dropped)."""
        return self.forecast_origins > 0 or self.stored_rows != len(self.frame)


# Part of every origin's digest: bump it when the code changes what a stored row would hold for the same inputs.
PREDICTION_CODE_VERSION = "1"


def origin_digests(panel: pd.DataFrame, days: Sequence[dt.date], lookback: int, version: str) -> dict[pd.Timestamp, str]:
    """Per origin session: a digest of what its rows are computed from.

    That is every panel row (all universe symbols, every input column, targets excluded) of the sessions from
    ``lookback_start(origin, lookback)`` to the origin, the model version and this code's version. An origin's
    ranks are over the universe, so any symbol's input change re-forecasts the whole origin.
    """
    inputs = [c for c in panel.columns if not str(c).startswith("target_")]
    rows = np.zeros(len(panel), dtype=np.uint64)
    for column in inputs:  # column by column: hashing panel[inputs] at once would copy the panel
        rows = rows * np.uint64(1_000_003) ^ pd.util.hash_pandas_object(panel[column], index=False).to_numpy()
    dates = panel["date"].to_numpy()
    order = np.argsort(dates, kind="stable")  # the panel is sorted by symbol: a session's rows stay in symbol order
    sorted_dates = dates[order]
    unique, first = np.unique(sorted_dates, return_index=True)
    bounds = np.append(first, len(order))
    per_day = [hashlib.blake2b(rows[order[a:b]].tobytes(), digest_size=16).digest() for a, b in zip(bounds[:-1], bounds[1:])]
    out = {}
    for day in days:
        lo = np.searchsorted(unique, np.datetime64(pd.Timestamp(lookback_start(day, lookback))), side="left")
        hi = np.searchsorted(unique, np.datetime64(pd.Timestamp(day)), side="right")
        h = hashlib.blake2b(f"{PREDICTION_CODE_VERSION}|{version}|{lookback}|".encode(), digest_size=16)
        for i in range(lo, hi):
            h.update(per_day[i])
        out[pd.Timestamp(day)] = h.hexdigest()
    return out


def _carried_days(stored: pd.DataFrame | None, wanted: set, digests: dict[pd.Timestamp, str], horizons: int) -> set[pd.Timestamp]:
    """Origins whose every wanted (symbol, origin) has its stored rows at all horizons with the current digest."""
    if stored is None or stored.empty or "inputs_digest" not in stored.columns:
        return set()
    keys = stored[["symbol", "date", "inputs_digest"]].assign(date=pd.to_datetime(stored["date"]))
    keys = keys[keys["inputs_digest"].to_numpy() == keys["date"].map(digests).to_numpy()]
    good = keys.groupby(["symbol", "date"]).size()
    good = set(good[good == horizons].index)
    by_day: dict[pd.Timestamp, bool] = {}
    for symbol, day in wanted:
        by_day[day] = by_day.get(day, True) and (symbol, day) in good
    return {day for day, ok in by_day.items() if ok}


def origins_by_version(origins: Sequence[dt.date], versions: Sequence[RegisteredModel]) -> dict[str, list[dt.date]]:
    """Origin sessions grouped by the model version each must use; an origin without one is an error naming it."""
    by_version: dict[str, list[dt.date]] = {}
    for day in sorted(origins):
        version = newest_before(versions, day)
        if version is None:
            raise ModelLoadError(
                f"no registered model has a cut-off before {day}: materialize trained_models for an earlier "
                f"cut-off (ibf train --cutoff DATE) before predicting {day}"
            )
        by_version.setdefault(version.version, []).append(day)
    return by_version


def forecastable(panel: pd.DataFrame, rows: pd.DataFrame, bundle: ModelBundle) -> tuple[pd.Series, dict[str, str]]:
    """Origins at least one trained member of ``bundle`` can forecast (so the ensemble has a value); why not, per symbol.

    GBDT forecasts every bar (missing features are native to it); a neural member needs enough observed
    sessions in its input window (``neural.forecastable``).
    """
    able = np.zeros(len(rows), dtype=bool)
    for member in bundle.members.values():
        if member.trained:
            able |= np.asarray(member.forecastable(panel, rows), dtype=bool)
    ok = pd.Series(able, index=rows.index)
    trained = ", ".join(m for m, member in bundle.members.items() if member.trained)
    reasons = {
        s: f"{s}: too little history for {trained} at {pd.Timestamp(rows.loc[(rows['symbol'] == s) & ~ok, 'date'].min()).date()} "
           f"(too few observed sessions in the {bundle.config.input_size}-session input window)"
        for s in rows.loc[~ok, "symbol"].unique()
    }
    return ok, reasons


def predict_rectangle(
    store,
    versions: Sequence[RegisteredModel],
    load: Callable[[RegisteredModel], ModelBundle],
    universe: list[str],
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    stored: pd.DataFrame | None = None,
) -> RectanglePredictions:
    """Forecasts for every origin of ``symbols`` x [start, end] that has stored features.

    A symbol of the rectangle without features on an origin, or with too little history, is an error naming it
    (before anything is written); other universe symbols that cannot be forecast are only left out of the ranks.
    ``stored``: the rectangle's stored rows; an origin whose inputs digest (``origin_digests``) still matches them
    is carried, not forecast again (the daily run of a month partition forecasts the new session).
    """
    # The keys only: the features themselves are read once, with the look-back, by load_panel below.
    keys = store.read(features_spec(), list(symbols), start, end, columns=["symbol", "date"])
    expected = set(zip(keys["symbol"], pd.to_datetime(keys["date"])))
    origins = sorted(set(pd.to_datetime(keys["date"]).dt.date))
    result = RectanglePredictions(frame=pd.DataFrame(columns=PREDICTIONS.column_names), expected=expected)
    parts = []
    for version_id, days in origins_by_version(origins, versions).items():
        model = next(v for v in versions if v.version == version_id)
        bundle = load(model)
        panel = load_panel(store, universe, lookback_start(min(days), bundle.lookback_sessions()), max(days))
        rows = panel[panel["date"].isin(pd.to_datetime(days))]
        # an origin is predicted for every symbol with a bar (and features) that session: a gap has no row
        wanted = {(s, d) for s, d in expected if d.date() in set(days)}
        missing = sorted(wanted - set(zip(rows["symbol"], rows["date"])))
        if missing:
            shown = ", ".join(f"{s} {d.date()}" for s, d in missing[:5])
            raise ModelDataError(f"{shown}: features stored but no bar to forecast from (is the symbol in the universe?)")
        # Only a run that stores its rows needs their digests (the API's fresh forecasts store nothing).
        digests = origin_digests(panel, days, bundle.lookback_sessions(), version_id) if stored is not None else {}
        carried = _carried_days(stored, wanted, digests, len(HORIZONS))
        result.versions[version_id] = model.cutoff.isoformat()
        if carried:
            keep = stored[pd.to_datetime(stored["date"]).isin(list(carried)) & stored["symbol"].isin(list(symbols))]
            parts.append(keep.assign(date=pd.to_datetime(keep["date"]))[PREDICTIONS.column_names])
            result.carried_origins += len(carried)
        rows = rows[~rows["date"].isin(list(carried))]
        if rows.empty:
            continue
        ok, reasons = forecastable(panel, rows, bundle)
        bad = sorted(s for s in reasons if s in symbols)
        if bad:
            raise ModelDataError("; ".join(reasons[s] for s in bad))
        result.unranked.update(reasons)
        table = predictions_table(forecast(bundle, panel, rows[ok]), rows[ok], bundle, version_id)
        if digests:
            table["inputs_digest"] = table["date"].map(digests)
        parts.append(table[table["symbol"].isin(list(symbols))])
        result.forecast_origins += rows["date"].nunique()
    if parts:
        result.frame = pd.concat(parts, ignore_index=True)
    result.stored_rows = 0 if stored is None else len(stored)
    return result


def storable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its date columns as the table declares them."""
    if frame.empty:
        return pd.DataFrame(columns=PREDICTIONS.column_names)
    out = frame.copy()
    for column in ("target_date", "model_cutoff"):
        out[column] = pd.to_datetime(out[column]).dt.date
    return out
