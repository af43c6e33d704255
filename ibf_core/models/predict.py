"""Batch inference: every member's h-day forecasts, the ensemble, conformal intervals and cross-sectional ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.models import ModelDataError
from ibf_core.models.bundle import ModelBundle
from ibf_core.models.ensemble import combine, interval_scale, intervals, rank_score

BOUNDS = ("lower_80", "upper_80", "lower_95", "upper_95")


def origin_rows(panel: pd.DataFrame, symbols: list[str] | None, dates: list | pd.DatetimeIndex) -> pd.DataFrame:
    """Rows of ``panel`` for the requested origins; a requested symbol without a row on a date is an error."""
    wanted = pd.DatetimeIndex(pd.to_datetime(list(dates))).normalize()
    rows = panel[panel["date"].isin(wanted)]
    if symbols is not None:
        rows = rows[rows["symbol"].isin(symbols)]
        have = set(zip(rows["symbol"], rows["date"]))
        for date in wanted:
            for symbol in symbols:
                if (symbol, date) not in have:
                    raise ModelDataError(f"{symbol}: no bar/feature row on {date.date()} to forecast from")
    return rows


def point_forecasts(bundle: ModelBundle, panel: pd.DataFrame, origins: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """member -> frame aligned with ``origins`` (rows of ``panel``) holding one ``h<h>`` column per horizon."""
    columns = [f"h{h}" for h in bundle.config.horizons]
    out: dict[str, pd.DataFrame] = {}
    for name, member in bundle.members.items():
        frame = member.predict(panel, origins)
        if list(frame.columns) != columns or len(frame) != len(origins):
            raise ValueError(f"member {name} returned columns {list(frame.columns)} x {len(frame)} rows, not {columns} x {len(origins)}")
        frame = frame.reset_index(drop=True)
        able = np.asarray(member.forecastable(panel, origins), dtype=bool)
        values = frame.to_numpy(dtype=np.float64)
        if member.finite and not np.isfinite(values[able]).all():
            raise ModelDataError(f"member {name} produced non-finite forecasts")
        frame.loc[~able, columns] = np.nan  # an origin the member cannot forecast has no forecast, not a guess
        out[name] = frame
    return out


def forecast(
    bundle: ModelBundle,
    panel: pd.DataFrame,
    origins: pd.DataFrame,
    with_intervals: bool = True,
    points: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Long frame ``symbol, date, horizon, member, pred`` (+ interval bounds) for every member and the ensemble.

    ``points``: the members' ``point_forecasts`` for these origins when already computed (training reuses them
    while it fits the ensemble weights and the interval quantiles).
    """
    if points is None:
        points = point_forecasts(bundle, panel, origins)
    origins = origins.reset_index(drop=True)
    scale_vol = origins["vol"].to_numpy(dtype=np.float64)
    frames = []
    for h in bundle.config.horizons:
        wide = pd.DataFrame({m: f[f"h{h}"].to_numpy() for m, f in points.items()})
        choice = bundle.ensemble.get(str(h))
        ranking = None
        if choice is not None:
            ranking = rank_score(wide, origins["date"].to_numpy(), choice.get("ranking")) if "ranking" in choice else None
            wide["ensemble"] = combine(wide, choice)
        scale = interval_scale(scale_vol, h, bundle.vol_fallback)
        for member in wide.columns:
            part = pd.DataFrame(
                {"symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy(), "horizon": h, "member": member, "pred": wide[member].to_numpy()}
            )
            if member == "ensemble" and ranking is not None:
                part["rank_score"] = ranking  # what ``rank`` orders (the ranking choice), beside the point forecast
            quantiles = bundle.conformal.get(member, {}).get(str(h)) if with_intervals else None
            for key in BOUNDS:
                part[key] = np.nan
            if quantiles:
                for key, values in intervals(part["pred"].to_numpy(), scale, quantiles).items():
                    part[key] = values
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


def rank_cross_section(frame: pd.DataFrame, value: str = "pred_return") -> pd.Series:
    """Rank 1 = highest expected return among the symbols of the same (date, horizon).

    Ordered by ``rank_score`` (the ensemble's ranking choice) where the frame has one, else by ``value``."""
    if "rank_score" in frame.columns and frame["rank_score"].notna().any():
        value = "rank_score"
    return frame.groupby(["date", "horizon"])[value].rank(ascending=False, method="first").astype("int64")


def predictions_table(long: pd.DataFrame, origins: pd.DataFrame, bundle: ModelBundle, version: str) -> pd.DataFrame:
    """One row per (symbol, date, horizon): the ensemble's return/price forecast, bounds, members, rank."""
    members = [m for m in long["member"].unique() if m != "ensemble" and bundle.members[m].reported]
    main = "ensemble" if "ensemble" in set(long["member"]) else members[0]
    table = long[long["member"] == main].drop(columns="member").rename(columns={"pred": "pred_return"})
    for member in members:
        part = long[long["member"] == member][["symbol", "date", "horizon", "pred"]].rename(columns={"pred": f"pred_{member}"})
        table = table.merge(part, on=["symbol", "date", "horizon"], how="left")
    prices = origins[["symbol", "date", "close", "session"]]
    table = table.merge(prices, on=["symbol", "date"], how="left")
    table["pred_price"] = table["close"] * np.exp(table["pred_return"])
    for key in BOUNDS:
        table[f"price_{key}"] = table["close"] * np.exp(table[key])
    sessions = all_sessions()
    table["target_date"] = sessions[np.minimum(table["session"] + table["horizon"], len(sessions) - 1)].to_numpy()
    table["rank"] = rank_cross_section(table)
    table["member_used"] = main
    table["model_version"] = version
    table["model_cutoff"] = pd.Timestamp(bundle.cutoff)
    return table.drop(columns="session").sort_values(["date", "horizon", "rank"]).reset_index(drop=True)
