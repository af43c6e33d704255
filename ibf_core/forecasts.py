"""Reading forecasts back: the newest stored predictions, the cross-sectional ranking, a symbol's history with
outcomes, on-demand ("fresh") predictions, rolling performance, drift status and model facts.

The queries a quant reuses from a notebook live here; the REST service (``ibf_serve``) only validates, calls
these and shapes JSON. Every read is read-only (``Warehouse.read`` / ``Warehouse.query``).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ibf_core.calendar import latest_complete_session, trading_days
from ibf_core.models import HORIZONS
from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS

# Heavy imports (numpy, talib) stay inside the functions that need them: importing this module loads none of them.

# Columns of one served forecast, in order (the PREDICTIONS columns a client needs, member forecasts left out).
FORECAST_COLUMNS: tuple[str, ...] = (
    "symbol", "horizon", "origin", "target_date", "close", "pred_return", "pred_price",
    "lower_80", "upper_80", "lower_95", "upper_95",
    "price_lower_80", "price_upper_80", "price_lower_95", "price_upper_95", "rank", "model_version",
)


class ForecastNotFound(LookupError):
    """No stored forecast matches the request (no predictions yet, or none on the asked origin)."""


@dataclass(frozen=True)
class Forecasts:
    """Forecasts of one origin session."""

    as_of: dt.date
    frame: pd.DataFrame  # FORECAST_COLUMNS
    model_versions: tuple[str, ...]


def _shape(frame: pd.DataFrame) -> pd.DataFrame:
    """PREDICTIONS rows as served forecasts: ``date`` becomes ``origin``, ordered by horizon then rank."""
    out = frame.rename(columns={"date": "origin"})
    out["origin"] = pd.to_datetime(out["origin"]).dt.date
    out["target_date"] = pd.to_datetime(out["target_date"]).dt.date
    out = out.sort_values(["horizon", "rank", "symbol"], kind="stable").reset_index(drop=True)
    return out[list(FORECAST_COLUMNS)]


def stored_symbols(store) -> list[str]:
    """Symbols that have stored predictions."""
    return store.symbols(PREDICTIONS)


def newest_origin(store, on_or_before: dt.date | None = None) -> dt.date | None:
    """The newest origin session with stored predictions (at or before ``on_or_before``), or None."""
    sql = "SELECT max(date) AS d FROM predictions" + (" WHERE date <= ?" if on_or_before else "")
    found = store.query(sql, [on_or_before] if on_or_before else [])["d"].iloc[0]
    return None if pd.isna(found) else pd.Timestamp(found).date()


def stored_forecasts(store, symbols: Sequence[str], horizons: Sequence[int], as_of: dt.date | None = None,
                     newest: NewestForecasts | None = None) -> Forecasts:
    """Stored forecasts of ``symbols`` x ``horizons`` from origin ``as_of`` (default: the newest origin, from
    ``newest`` when given).

    The ranks are the universe-wide ranks stored by the ``predictions`` asset, not re-ranked over ``symbols``.
    """
    cached = _cached(newest, as_of)
    if cached is not None:
        return _found(_select(cached, symbols, horizons), "for the requested symbols")
    origin = _origin(store, as_of)
    frame = store.read(PREDICTIONS, list(symbols), origin, origin)
    return _found(_forecasts(origin, frame[frame["horizon"].isin(list(horizons))]), "for the requested symbols")


def ranking(store, horizon: int, top: int, as_of: dt.date | None = None, newest: NewestForecasts | None = None) -> Forecasts:
    """The cross-sectional ranking of an origin (default: the newest, from ``newest`` when given) at ``horizon``:
    ranks 1..``top``."""
    cached = _cached(newest, as_of)
    if cached is not None:
        return _found(_select(cached, horizons=[horizon], top=top), f"at horizon {horizon}")
    origin = _origin(store, as_of)
    frame = store.query(
        'SELECT * FROM predictions WHERE date = ? AND horizon = ? AND "rank" <= ? ORDER BY "rank"', [origin, horizon, top]
    )
    return _found(_forecasts(origin, frame), f"at horizon {horizon}")


def _cached(newest: NewestForecasts | None, as_of: dt.date | None) -> Forecasts | None:
    """The in-memory newest origin when it answers ``as_of`` (None: read the files)."""
    value = newest.get() if newest is not None else None
    return value if value is not None and (as_of is None or as_of == value.as_of) else None


def _origin(store, as_of: dt.date | None) -> dt.date:
    origin = as_of if as_of is not None else newest_origin(store)
    if origin is None:
        raise ForecastNotFound("no predictions are stored yet: materialize the predictions asset first")
    return origin


def _forecasts(origin: dt.date, frame: pd.DataFrame) -> Forecasts:
    """PREDICTIONS rows of one origin as served forecasts."""
    return Forecasts(origin, _shape(frame) if len(frame) else frame, tuple(sorted(set(frame["model_version"]))))


def _found(found: Forecasts, what: str) -> Forecasts:
    if found.frame.empty:
        raise ForecastNotFound(f"no stored predictions on origin {found.as_of} {what}")
    return found


class NewestForecasts:
    """The newest origin's stored forecasts of every symbol, held in memory and read again only after a writer
    swapped a predictions file in (which changes the table folder's modification time): a server answers the
    common request - the newest origin - without touching the files."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._value: Forecasts | None = None

    def _folder_stamp(self) -> int | None:
        return self.store.table_stamp(PREDICTIONS)

    def get(self) -> Forecasts | None:
        """The newest origin's forecasts (all symbols and horizons), or None when none are stored."""
        stamp = self._folder_stamp()  # taken before reading: a swap during the read makes the next call re-read
        with self._lock:
            if stamp is None or stamp != self._stamp:
                origin = newest_origin(self.store)
                value = None
                if origin is not None:
                    value = _forecasts(origin, self.store.read(PREDICTIONS, None, origin, origin))
                self._stamp, self._value = stamp, value
            return self._value

    def is_current(self) -> bool:
        """True when ``get()`` answers from memory: no predictions file was swapped in since the last read."""
        stamp = self._folder_stamp()
        return stamp is not None and stamp == self._stamp

    def symbols(self) -> set[str]:
        value = self.get()
        return set(value.frame["symbol"]) if value is not None else set()


def _select(found: Forecasts, symbols: Sequence[str] | None = None, horizons: Sequence[int] | None = None, top: int | None = None) -> Forecasts:
    frame = found.frame
    mask = pd.Series(True, index=frame.index)
    if symbols is not None:
        mask &= frame["symbol"].isin(list(symbols))
    if horizons is not None:
        mask &= frame["horizon"].isin(list(horizons))
    if top is not None:
        mask &= frame["rank"] <= top
    part = frame[mask]
    return Forecasts(found.as_of, part.reset_index(drop=True), tuple(sorted(set(part["model_version"]))))


def forecast_history(store, symbol: str, start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
    """A symbol's stored forecasts between origins ``start`` and ``end`` with realized outcomes where matured
    (the ``forecast_outcomes`` view; NULL outcome columns for forecasts whose target has not passed)."""
    where, params = ["p.symbol = ?"], [symbol]
    if start is not None:
        where.append("p.date >= ?")
        params.append(start)
    if end is not None:
        where.append("p.date <= ?")
        params.append(end)
    sql = f"""
SELECT p.symbol, p.date AS origin, p.horizon, p.target_date, p.close, p.pred_return, p.pred_price,
       p.lower_80, p.upper_80, p.lower_95, p.upper_95, p."rank", p.model_version,
       o.realized_price, o.realized_return, o.abs_error, o.pct_error, o.direction_hit, o.hit_80, o.hit_95
FROM predictions p
LEFT JOIN forecast_outcomes o ON o.symbol = p.symbol AND o.date = p.date AND o.horizon = p.horizon
WHERE {' AND '.join(where)} ORDER BY p.date, p.horizon"""
    out = store.query(sql, params)
    for column in ("origin", "target_date"):
        out[column] = pd.to_datetime(out[column]).dt.date
    return out


def newest_feature_session(store, symbols: Sequence[str]) -> dt.date | None:
    """The newest session on which every one of ``symbols`` has stored features."""
    found = store.query(
        "SELECT min(d) AS d FROM (SELECT symbol, max(date) AS d FROM features WHERE list_contains(?, symbol) GROUP BY symbol "
        "HAVING count(*) > 0) t HAVING count(*) = ?",
        [list(symbols), len(set(symbols))],
    )
    if found.empty or pd.isna(found["d"].iloc[0]):
        return None
    return pd.Timestamp(found["d"].iloc[0]).date()


def fresh_forecasts(store, versions, load, universe: list[str], symbols: Sequence[str], horizons: Sequence[int], as_of: dt.date | None = None) -> Forecasts:
    """Forecasts computed now from stored features (origin ``as_of``, default: the newest with features for all
    ``symbols``) with the registered versions: the same batched code as the ``predictions`` asset
    (``predict_rectangle``), nothing written. Raises ``ModelLoadError`` for a missing or tampered bundle."""
    from ibf_core.models.inference import predict_rectangle

    origin = as_of if as_of is not None else newest_feature_session(store, symbols)
    if origin is None:
        raise ForecastNotFound("no stored features for the requested symbols: materialize features first")
    result = predict_rectangle(store, versions, load, universe, list(symbols), origin, origin)
    frame = result.frame
    frame = frame[frame["horizon"].isin(list(horizons))]
    if frame.empty:
        raise ForecastNotFound(f"no features on origin {origin} for the requested symbols")
    return _forecasts(origin, frame)


def performance(store, window: int, as_of: dt.date | None = None, horizons: Sequence[int] = HORIZONS) -> pd.DataFrame:
    """Pooled rolling performance per horizon of matured forecasts (``rolling_performance``'s pooled row):
    ``horizon, n, mae, mape, rmse, mase, da, rank_ic, coverage_80, coverage_95`` over the ``window`` sessions
    ending at ``as_of`` (default: the newest matured target session)."""
    from ibf_core.monitoring.outcomes import POOLED, rolling_performance

    outcomes = store.query("SELECT * FROM forecast_outcomes")
    columns = ["horizon", "n", "mae", "mape", "rmse", "mase", "da", "rank_ic", "coverage_80", "coverage_95"]
    if outcomes.empty:
        return pd.DataFrame(columns=[*columns, "as_of"])
    outcomes["date"], outcomes["target_date"] = pd.to_datetime(outcomes["date"]), pd.to_datetime(outcomes["target_date"])
    end = pd.Timestamp(as_of) if as_of is not None else outcomes["target_date"].max()
    rows = []
    for h in horizons:
        pooled = rolling_performance(outcomes, end, window, h)
        row = pooled[pooled["symbol"] == POOLED].iloc[0].to_dict()
        rows.append({"horizon": h, **{k: row[k] for k in columns if k != "horizon"}})
    return pd.DataFrame(rows, columns=columns).assign(as_of=end.date())


def drift_status(store, universe: list[str], policy) -> dict[str, Any]:
    """The retrain rule's status on the newest drift-scored session and the detectors breached there per symbol."""
    from ibf_core.monitoring.rectangle import retrain_status

    newest = store.query("SELECT max(date) AS d FROM drift_scores")["d"].iloc[0]
    if pd.isna(newest):
        return {"as_of": None, "retrain": False, "reasons": ["no drift scores stored yet"], "episode_start": None, "breached": {}}
    day = pd.Timestamp(newest)
    status = retrain_status(store, universe, day, policy)
    rows = store.read(DRIFT_SCORES, universe, day.date(), day.date())
    hits = rows[rows["breached"].fillna(False).astype(bool)]
    breached = {s: sorted(set(g["detector"])) for s, g in hits.groupby("symbol")}
    return {"as_of": day.date(), **status, "breached": breached}


def newest_bar_age_sessions(store, today: dt.date | None = None) -> int | None:
    """Sessions between the oldest of the symbols' newest bars and the latest complete session (None without bars)."""
    if not store.symbols(MARKET_BARS):
        return None
    newest = store.query("SELECT min(d) AS d FROM (SELECT max(date) AS d FROM market_bars GROUP BY symbol)")["d"].iloc[0]
    if pd.isna(newest):
        return None
    latest = today or latest_complete_session()
    newest_d = pd.Timestamp(newest).date()
    return 0 if newest_d >= latest else len(trading_days(newest_d, latest)) - 1


def model_facts(tracking_uri: str, model, work_dir) -> dict[str, Any]:
    """A registry version's facts: cut-off, members, ensemble weights, validation metrics per horizon, feature
    importance by group (``ibf_core.models.importance``; None for a bundle trained without it), device, manifest
    digest, from its tags and its bundle's ``bundle.json`` (only that file is downloaded)."""
    from ibf_core.models.registry import quiet_mlflow

    mlflow = quiet_mlflow()
    client = mlflow.MlflowClient(tracking_uri)
    version = client.get_model_version(model.name, model.version)
    tags = version.tags or {}
    mlflow.set_tracking_uri(tracking_uri)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model.source}/bundle.json", dst_path=str(work_dir)))
    described = json.loads(path.read_text())
    validation: dict[str, dict[str, dict[str, Any]]] = {}
    for row in described.get("validation", []):
        metrics = {k: v for k, v in row.items() if k not in ("horizon", "member")}
        validation.setdefault(str(row["horizon"]), {})[str(row["member"])] = metrics
    return {
        "version": model.version,
        "name": model.name,
        "cutoff": model.cutoff.isoformat(),
        "members": [m for m in tags.get("members", "").split(",") if m],
        "device": tags.get("device"),
        "manifest_sha256": model.manifest_sha256,
        "data_fingerprint": tags.get("data_fingerprint"),
        "run_id": model.run_id,
        "ensemble": described.get("ensemble", {}),
        "validation": validation,
        "importance": described.get("facts", {}).get("importance"),
        "created": dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.timezone.utc).isoformat(),
    }
