"""Incremental drift scoring of a (symbols x sessions) rectangle: rescored only where its inputs changed."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import lookback_start
from ibf_core.features.table import features_spec
from ibf_core.models.registry import newest_before
from ibf_core.monitoring.outcomes import matured_outcomes
from ibf_core.monitoring.scores import (
    DriftPolicy,
    drift_row,
    drift_seed,
    feature_drift_rows_many,
    performance_part_rows,
    reference_start,
    retrain_decision,
    window_outcomes,
)
from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS

# What a drift row is computed from besides its inputs: bump when the scoring itself changes, and every stored row
# is rescored by the next run (its digest no longer matches).
SCORING_VERSION = "3"  # 3: the monitored rank IC is the served ranking's (``served_order``)
_OUTCOME_DIGEST_COLUMNS = [
    "symbol", "date", "target_date", "pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95",
    "rank_score", "realized_price", "realized_return",
]


@dataclass(frozen=True)
class RectangleScores:
    """The drift rows of a rectangle, and how many (symbol, session) pairs were scored, carried or dropped."""

    frame: pd.DataFrame
    scored: int
    carried: int
    dropped: int  # stored pairs the rectangle no longer has (a session without features any more)

    @property
    def changed(self) -> bool:
        """Whether the rows differ from the stored ones (False: nothing to write)."""
        return bool(self.scored or self.dropped)


def recent_lookback(policy: DriftPolicy) -> int:
    """Sessions before an evaluated day that its recent feature window and its performance window may reach."""
    return policy.feature_window + policy.window + policy.horizon + 5


def _digest(*parts: bytes | str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def _array_digest(values: np.ndarray) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float64)
    return _digest(str(values.shape), values.tobytes())


class _ScoringInputs:
    """Everything scoring reads for ``universe`` up to ``end``, read once: the drift features of every stored
    session (recent windows and reference windows come from the same rows), and the matured forecasts."""

    def __init__(self, store, universe: list[str], start: dt.date, end: dt.date, policy: DriftPolicy):
        self.policy = policy
        end_ts = pd.Timestamp(end)
        first = pd.Timestamp(lookback_start(start, recent_lookback(policy)))
        features = _frame(store.read_partitions(features_spec(), universe, ["symbol", "date", "warmup", *policy.features]))
        features = features[features["date"] <= end_ts].sort_values(["symbol", "date"], kind="stable")
        self.sessions = features[["symbol", "date"]]  # every stored session (warm-up too) decides the days scored
        usable = features[~features["warmup"].astype(bool)]
        names = usable["symbol"].to_numpy()
        keys, starts = np.unique(names, return_index=True)
        stops = [*starts[1:], len(names)]
        dates = usable["date"].to_numpy()
        values = usable[list(policy.features)].to_numpy(dtype=np.float64)
        self.usable = {k: (dates[a:b], values[a:b]) for k, a, b in zip(keys, starts, stops)}
        self.empty = (dates[:0], values[:0])

        columns = ["symbol", "date", "horizon", "target_date", "pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95", "rank_score"]
        predictions = _frame(store.read_partitions(PREDICTIONS, universe, columns))
        predictions = predictions[(predictions["horizon"] == policy.horizon) & predictions["date"].between(first, end_ts)]
        predictions = predictions.assign(target_date=pd.to_datetime(predictions["target_date"]))
        bars = _frame(store.read_partitions(MARKET_BARS, universe, ["symbol", "date", "close", "adj_close"]))
        bars = bars[bars["date"].between(first, end_ts)].sort_values(["symbol", "date"], kind="stable")
        # Matured by ``end``; each day then keeps the forecasts matured by itself (``window_outcomes``).
        self.outcomes = matured_outcomes(predictions.sort_values(["symbol", "date"], kind="stable"), bars, end)
        self.references: dict[str, tuple[dict[str, np.ndarray], dict[str, bytes]]] = {}

    def recent(self, symbol: str, day: pd.Timestamp, first: pd.Timestamp) -> np.ndarray:
        """The symbol's last ``feature_window`` usable rows up to ``day``, none before ``first``."""
        dates, values = self.usable.get(symbol, self.empty)
        hi = int(dates.searchsorted(day.to_datetime64(), side="right"))
        lo = max(int(dates.searchsorted(first.to_datetime64(), side="left")), hi - self.policy.feature_window)
        return values[lo:hi]

    def reference(self, version) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        """The version's reference windows (``reference_windows`` of its cut-off) and their digests, per symbol."""
        if version.version not in self.references:
            cutoff = pd.Timestamp(version.cutoff)
            first = pd.Timestamp(reference_start(version.cutoff, self.policy)).to_datetime64()
            windows, digests = {}, {}
            for symbol, (dates, values) in self.usable.items():
                hi = int(dates.searchsorted(cutoff.to_datetime64(), side="right"))
                lo = max(int(dates.searchsorted(first, side="left")), hi - self.policy.reference_sessions)
                if hi > lo:
                    windows[symbol] = values[lo:hi]
                    digests[symbol] = _array_digest(values[lo:hi])
            self.references[version.version] = (windows, digests)
        return self.references[version.version]


def _frame(table) -> pd.DataFrame:
    frame = table.to_pandas()
    return frame.assign(date=pd.to_datetime(frame["date"]))


def _version_key(version) -> str:
    if version is None:
        return "none"
    return f"{version.version}|{version.cutoff}|{getattr(version, 'manifest_sha256', '')}"


def _score(store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy,
           stored: pd.DataFrame | None) -> RectangleScores:
    """Score ``symbols`` x the sessions in [start, end], carrying the ``stored`` rows whose digest still matches."""
    symbols = list(symbols)
    inputs = _ScoringInputs(store, list(universe), start, end, policy)
    mine = inputs.sessions[inputs.sessions["symbol"].isin(symbols)]
    days = sorted(d for d in mine["date"].unique() if pd.Timestamp(start) <= d <= pd.Timestamp(end))
    policy_key = _digest(SCORING_VERSION, repr(policy))
    known: dict[tuple[str, pd.Timestamp], str] = {}
    if stored is not None and len(stored) and "inputs_digest" in stored.columns:
        pairs = stored[["symbol", "date", "inputs_digest"]].drop_duplicates()
        pairs = pairs[~pairs.duplicated(["symbol", "date"], keep=False) & pairs["inputs_digest"].notna()]
        known = {(s, pd.Timestamp(d)): h for s, d, h in pairs.itertuples(index=False)}
    frames: list[pd.DataFrame] = []
    carried: list[tuple[str, pd.Timestamp]] = []
    rescored: set[tuple[str, pd.Timestamp]] = set()
    scored = 0
    for day in days:
        day = pd.Timestamp(day)
        version = newest_before(versions, day.date())
        refs, ref_digests = inputs.reference(version) if version is not None else (None, {})
        label = version.version if version is not None else ""
        first = pd.Timestamp(lookback_start(day.date(), recent_lookback(policy)))
        part = window_outcomes(inputs.outcomes, day, policy)
        day_key = _digest(
            policy_key, _version_key(version), str(day.date()),
            pd.util.hash_pandas_object(part[_OUTCOME_DIGEST_COLUMNS], index=False).to_numpy().tobytes() if len(part) else b"",
        )
        recents, todo, digests = {}, [], {}
        for symbol in symbols:
            recent = inputs.recent(symbol, day, first)
            digest = _digest(day_key, ref_digests.get(symbol, b""), _array_digest(recent)).hex()
            if known.get((symbol, day)) == digest:
                carried.append((symbol, day))
                continue
            recents[symbol], digests[symbol] = recent, digest
            todo.append(symbol)
        if not todo:
            continue
        scored += len(todo)
        rescored.update((s, day) for s in todo)
        if refs is None:
            reason = f"no model trained before {day.date()}: no reference window"
            drift_rows = {s: [drift_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")] for s in todo}
        else:
            empty = np.empty((0, len(policy.features)))
            batch = feature_drift_rows_many([refs.get(s, empty) for s in todo], [recents[s] for s in todo],
                                            list(policy.features), policy, seed=drift_seed(day))
            drift_rows = dict(zip(todo, batch))
        perf_rows = performance_part_rows(todo, part, day, policy)
        rows = [
            {"symbol": s, "date": day, **row, "model_version": label, "inputs_digest": digests[s]}
            for s in todo for row in (*drift_rows[s], *perf_rows[s])
        ]
        frames.append(pd.DataFrame(rows, columns=DRIFT_SCORES.column_names))
    if carried:
        at = pd.MultiIndex.from_arrays([stored["symbol"], pd.to_datetime(stored["date"])])
        frames.insert(0, stored[at.isin(pd.MultiIndex.from_tuples(carried))][DRIFT_SCORES.column_names])
    before = set()
    if stored is not None and len(stored):
        before = set(stored[["symbol", "date"]].drop_duplicates().itertuples(index=False, name=None))
    dropped = len({(s, pd.Timestamp(d)) for s, d in before} - set(carried) - rescored)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DRIFT_SCORES.column_names)
    return RectangleScores(frame, scored, len(carried), dropped)


def score_rectangle(store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy) -> pd.DataFrame:
    """Every detector for ``symbols`` x the sessions in [start, end] that have features (``drift_scores`` rows),
    all scored afresh (``refresh_rectangle`` carries the unchanged stored rows instead).

    ``versions``: the registered model versions, oldest cut-off first; each day is judged against the
    reference of ``newest_before(versions, day)``. The universe's matured forecasts feed the pooled metrics.
    A day's rows read nothing after the day: its recent features, the forecasts matured by its close, the
    model version in force on it — the same rows whatever rectangle the day is scored in.
    """
    return _score(store, versions, universe, symbols, start, end, policy, None).frame


def refresh_rectangle(
    store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy,
    stored: pd.DataFrame | None = None,
) -> RectangleScores:
    """``score_rectangle``, but a (symbol, session) whose stored rows were scored from the same inputs is carried,
    not rescored: the daily run of a month partition scores the new session, not the month to date.

    The rule: a drift row of (symbol, day) is a deterministic function of (a) the scoring code
    (``SCORING_VERSION``) and the policy, (b) the model version in force on the day (version, cut-off, manifest)
    and the symbol's reference window under it, (c) the symbol's recent feature window up to the day and (d) the
    universe's forecasts that matured in the performance window ending at the day, with their realized prices
    (the pooled metrics read every symbol's). ``inputs_digest`` stored with the rows hashes exactly those values.
    The rows are carried when the digest computed from the warehouse now equals the stored one, so identical
    inputs give identical rows; any rewrite that changes a value they read (features, predictions or bars of a
    session up to the day, a new or re-registered model version, a changed setting) changes the digest, and the
    pair is rescored. A rewrite with identical values keeps the digest: rescoring would give the same rows.
    Rows stored without a digest (before it existed) are rescored once.

    ``stored``: the rectangle's stored rows when the caller has read them already (else they are read here).
    """
    if stored is None:
        stored = store.read(DRIFT_SCORES, list(symbols), start, end)
    return _score(store, versions, universe, symbols, start, end, policy, stored)


def retrain_status(
    store, universe: list[str], as_of: pd.Timestamp | None, policy: DriftPolicy, history: pd.DataFrame | None = None
) -> dict[str, Any]:
    """``retrain_decision`` over the stored drift rows of the universe in the look-back before ``as_of``
    (``history``: those rows when the caller has them, at least the look-back; else they are read)."""
    if as_of is None:
        return {"retrain": False, "reasons": ["no drift rows in this run"], "episode_start": None}
    as_of = pd.Timestamp(as_of)
    if history is None:
        history = store.read(DRIFT_SCORES, universe, (as_of - pd.Timedelta(days=policy.lookback_days)).date(), as_of.date())
    return retrain_decision(history, as_of, policy)
