"""Feature importance for people: long tables, the mean over folds, markdown, MLflow metrics and plot frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ibf_core.models.importance import METHOD, VSN_PARTS, clean_number
from ibf_core.report import markdown_table

# ---------------------------------------------------------------- tables, folds, reports, MLflow

VALUES = ("rank_ic_drop", "rank_ic_drop_std", "mse_rise", "mse_rise_std")


def table(importance: dict[str, Any] | None) -> pd.DataFrame:
    """Long rows ``member, horizon, group, rank_ic_drop, rank_ic_drop_std, mse_rise, mse_rise_std, gain_share``."""
    columns = ["member", "horizon", "group", *VALUES, "gain_share"]
    if not importance or "permutation" not in importance:
        return pd.DataFrame(columns=columns)
    rows = []
    gain = importance.get("gain", {})
    for member, by_h in importance["permutation"].items():
        for h, by_group in by_h.items():
            for group, values in by_group.items():
                share = gain.get(member, {}).get(h, {}).get(group)
                rows.append({"member": member, "horizon": int(h), "group": group, **{k: values.get(k) for k in VALUES}, "gain_share": share})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({k: float for k in [*VALUES, "gain_share"]})


def aggregate(importances: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Walk-forward folds' importances averaged: ``horizons[str(h)][member][group]`` holds the mean over the folds
    of each fold's mean (``*_std``: the std across folds, ddof 1) and ``folds`` (folds with a value), plus the mean
    LightGBM ``gain_share``; ``tft_vsn[member]`` the mean selection shares by group."""
    frames, vsn, missing = [], {}, {}
    for fold, importance in enumerate(importances, start=1):
        if not importance or "permutation" not in importance:
            missing[str(fold)] = (importance or {}).get("unavailable", "not measured")
            continue
        frames.append(table(importance).assign(fold=fold))
        for member, weights in importance.get("tft_vsn", {}).items():
            for part in VSN_PARTS.values():
                for group, share in (weights.get(part) or {}).items():
                    vsn.setdefault(member, {}).setdefault(part, {}).setdefault(group, []).append(share)
    out: dict[str, Any] = {"method": METHOD, "folds": len(frames), "horizons": {}, "tft_vsn": {}, "not_measured": missing}
    if frames:
        long = pd.concat(frames, ignore_index=True)
        grouped = long.groupby(["horizon", "member", "group"], sort=False)
        stats = grouped.agg(
            rank_ic_drop=("rank_ic_drop", "mean"), rank_ic_drop_std=("rank_ic_drop", "std"), mse_rise=("mse_rise", "mean"),
            mse_rise_std=("mse_rise", "std"), gain_share=("gain_share", "mean"), folds=("rank_ic_drop", "count"),
        ).reset_index()
        for row in stats.sort_values("horizon", kind="stable").itertuples(index=False):
            values = {k: clean_number(getattr(row, k)) for k in (*VALUES, "gain_share")}
            values["folds"] = int(row.folds)
            out["horizons"].setdefault(str(row.horizon), {}).setdefault(row.member, {})[row.group] = values
    out["tft_vsn"] = {m: {p: {g: float(np.mean(v)) for g, v in parts.items()} for p, parts in by.items()} for m, by in vsn.items()}
    return out


def _ordered_members(members: list[str]) -> list[str]:
    return sorted(members, key=lambda m: (m == "ensemble", members.index(m)))


def horizon_markdown(by_member: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One horizon's table: a row per group, each member's rank IC drop and MSE rise, LightGBM gain shares."""
    members = _ordered_members(list(by_member))
    groups = list(dict.fromkeys(g for m in members for g in by_member[m]))
    rows = []
    for group in groups:
        row: dict[str, Any] = {"group": group}
        for m in members:
            row[f"{m} ΔRankIC"] = by_member[m].get(group, {}).get("rank_ic_drop")
        for m in members:
            row[f"{m} ΔMSE"] = by_member[m].get(group, {}).get("mse_rise")
        for m in members:
            if any(by_member[m].get(g, {}).get("gain_share") is not None for g in groups):
                row[f"{m} gain"] = by_member[m].get(group, {}).get("gain_share")
        rows.append(row)
    frame = pd.DataFrame(rows)
    key = next((c for c in (f"{m} ΔRankIC" for m in reversed(members)) if c in frame), None)
    if key is not None:
        frame = frame.sort_values(key, ascending=False, na_position="last", kind="stable")
    return markdown_table(frame, max_rows=len(frame), floatfmt=".3g")


def markdown(aggregated: dict[str, Any]) -> str:
    """The walk-forward report's section: per horizon, every group's importance averaged over the folds."""
    lines = ["## Feature importance by group", ""]
    if not aggregated.get("horizons"):
        return "\n".join([*lines, "_not measured (no fold recorded feature importance)_", ""])
    lines += [
        (f"Averaged over {aggregated['folds']} fold(s), each measured on its bundle's own validation window (out of "
        "sample for that model). ΔRankIC: mean per-date Spearman IC lost when all of a group's columns are permuted "
        "jointly across symbols within each date (date-level columns such as the calendar: across dates); ΔMSE: the "
        "rise in mean squared error; gain: the group's share of LightGBM's total split gain. A group near zero "
        "carries nothing the model uses on these origins; a negative value is noise (or a group that hurt)."),
        "",
    ]
    for h, by_member in aggregated["horizons"].items():
        lines += [f"### h={h}", "", horizon_markdown(by_member), ""]
    for member, parts in aggregated.get("tft_vsn", {}).items():
        text = "; ".join(f"{part}: " + ", ".join(f"{g} {v:.3f}" for g, v in sorted(shares.items(), key=lambda kv: -kv[1])) for part, shares in parts.items())
        lines += [f"{member} variable-selection weights by group ({text}).", ""]
    return "\n".join(lines)


def bundle_markdown(importance: dict[str, Any] | None) -> str:
    """A bundle's group-importance tables (one per horizon), or why there are none."""
    if not importance or "permutation" not in importance:
        return f"_feature importance not measured: {(importance or {}).get('unavailable', 'trained without it')}_"
    single = aggregate([importance])
    return "\n\n".join(f"**h={h}**\n\n{horizon_markdown(by_member)}" for h, by_member in single["horizons"].items())


def mlflow_metrics(importance: dict[str, Any] | None) -> dict[str, float]:
    """``importance/<member>/h<h>/<group>`` (rank IC drop), ``importance_mse/...`` (MSE rise), ``importance_gain/...``
    (LightGBM gain share) and ``importance_vsn/<member>/<historical|future|static>/<group>`` (TFT selection share)."""
    out: dict[str, float] = {}
    if not importance or "permutation" not in importance:
        return out
    for member, by_h in importance["permutation"].items():
        for h, by_group in by_h.items():
            for group, values in by_group.items():
                for prefix, key in (("importance", "rank_ic_drop"), ("importance_mse", "mse_rise")):
                    if values.get(key) is not None:
                        out[f"{prefix}/{member}/h{h}/{group}"] = float(values[key])
    for member, by_h in importance.get("gain", {}).items():
        for h, shares in by_h.items():
            for group, share in shares.items():
                out[f"importance_gain/{member}/h{h}/{group}"] = float(share)
    for member, weights in importance.get("tft_vsn", {}).items():
        for part in VSN_PARTS.values():
            for group, share in (weights.get(part) or {}).items():
                out[f"importance_vsn/{member}/{part}/{group}"] = float(share)
    return out


def plot_frame(importance: dict[str, Any] | None) -> pd.DataFrame:
    """``member, group, rank_ic_drop`` averaged over the horizons: what the metadata bar plot shows."""
    long = table(importance)
    if long.empty:
        return pd.DataFrame(columns=["member", "group", "rank_ic_drop"])
    mean = long.groupby(["member", "group"], sort=False)["rank_ic_drop"].mean().reset_index()
    order = _ordered_members(list(dict.fromkeys(mean["member"])))
    return mean.sort_values("member", key=lambda s: s.map(order.index), kind="stable").reset_index(drop=True)
