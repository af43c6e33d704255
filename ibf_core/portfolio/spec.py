"""Strategy specs: the named strategies, their parameters and the validation settings run (imports no numpy/pandas)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ibf_core.models import HORIZONS
from ibf_core.models.names import trained_members

# The registry of strategy names (ibf_core.portfolio.strategies.BUILDERS holds their functions, tested equal).
STRATEGY_NAMES: dict[str, str] = {
    "topk": "long-only, equal weights on the k best-scored names, rebuilt at every rebalance",
    "topk_dropout": "Qlib's TopkDropout: hold k names; per rebalance sell at most n_drop of the worst-ranked held "
    "names, only when better names exist, and buy the best names not held to refill k",
    "long_short": "dollar-neutral: long the k best-scored names, short the k worst, equal weights per leg",
}
# k as a fraction of a session's scored names (with a floor): 2 of the 4-symbol sample, 50 of a 500-symbol universe.
DEFAULT_PORTFOLIOS: dict[str, dict[str, Any]] = {"topk": {"strategy": "topk", "k": 0.1, "k_min": 2}}
PORTFOLIO_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
MAX_LEVERAGE = 4.0
DEFAULT_LEVERAGE = {"topk": 1.0, "topk_dropout": 1.0, "long_short": 2.0}  # long_short: 1 long, 1 short


def score_columns() -> tuple[str, ...]:
    """The ``predictions`` columns a strategy may rank by."""
    return ("rank_score", "pred_return", "pred_drift", *(f"pred_{m}" for m in trained_members()))


def _count_or_fraction(value: float) -> bool:
    """An integer count >= 1, or a fraction in (0, 1)."""
    return (0 < value < 1) or (value >= 1 and float(value).is_integer())


@dataclass(frozen=True)
class Strategy:
    """A portfolio's strategy and parameters; construction validates (``ValueError`` naming the key and value)."""

    strategy: str = "topk"
    k: float = 0.1  # names per leg: a count >= 1, or a fraction (0, 1) of the session's scored names
    k_min: int = 1  # floor of a fractional k
    n_drop: float = 0.1  # topk_dropout: names replaced per rebalance at most: a count, or a fraction (0, 1) of k
    horizon: int = 1  # the predictions' horizon ranked
    rebalance: int | None = None  # sessions between rebalances (origins with predictions); None: the horizon
    score: str = "rank_score"  # predictions column ranked (rank_score falls back to pred_return where it is NULL)
    max_weight: float | None = None  # largest |weight| of one name; the excess goes to the leg's other names
    turnover_cap: float | None = None  # largest sum |w_new - w_now| of one rebalance; the trade is scaled down to it
    sector_neutral: bool = False  # rank against the sector mean; long_short weights also demeaned per sector
    min_dollar_volume: float = 0.0  # names whose 20-session mean close x volume (USD) is below this are not bought
    leverage: float | None = None  # sum |w| of a fresh portfolio; None: 1 (long-only), 2 (long_short: 1 per leg)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {self.strategy!r} (known: {', '.join(STRATEGY_NAMES)})")
        checks: list[tuple[str, bool, str]] = [
            ("k", _count_or_fraction(self.k), "a count >= 1 or a fraction in (0, 1) of the session's names"),
            ("k_min", self.k_min >= 1, "an integer >= 1"),
            ("n_drop", _count_or_fraction(self.n_drop), "a count >= 1 or a fraction in (0, 1) of k"),
            ("horizon", self.horizon in HORIZONS, f"one of the forecast horizons {', '.join(map(str, HORIZONS))}"),
            ("rebalance", self.rebalance is None or self.rebalance >= 1, "sessions between rebalances, >= 1"),
            ("score", self.score in score_columns(), f"a predictions column: {', '.join(score_columns())}"),
            ("max_weight", self.max_weight is None or 0 < self.max_weight <= 1, "in (0, 1]"),
            ("turnover_cap", self.turnover_cap is None or self.turnover_cap > 0, "> 0 (sum of |weight changes|)"),
            ("min_dollar_volume", math.isfinite(self.min_dollar_volume) and self.min_dollar_volume >= 0, ">= 0 (USD)"),
            ("leverage", self.leverage is None or 0 < self.leverage <= MAX_LEVERAGE, f"in (0, {MAX_LEVERAGE:g}]"),
        ]
        for key, ok, must in checks:
            if not ok:
                raise ValueError(f"{key}: must be {must} (got {getattr(self, key)!r})")
        if self.rebalance is None:
            object.__setattr__(self, "rebalance", self.horizon)
        if self.leverage is None:
            object.__setattr__(self, "leverage", DEFAULT_LEVERAGE[self.strategy])

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | str, name: str | None = None) -> Strategy:
        """A spec from a settings value (a mapping, or a bare strategy name); errors name the portfolio and the key."""
        where = f"portfolio {name!r}: " if name is not None else ""
        data = {"strategy": raw} if isinstance(raw, str) else raw
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}must be a mapping of strategy parameters (got {raw!r})")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"{where}unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        if "strategy" not in data:
            raise ValueError(f"{where}strategy: missing (one of {', '.join(STRATEGY_NAMES)})")
        if "n_drop" in data and str(data["strategy"]).strip().lower() != "topk_dropout":
            raise ValueError(f"{where}n_drop: applies to strategy topk_dropout only (this is {data['strategy']!r})")
        values = {}
        for key, value in data.items():
            try:
                values[key] = _coerce(key, value)
            except ValueError as exc:
                raise ValueError(f"{where}{exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """Every parameter, defaults resolved (JSON-ready; ``n_drop`` only for topk_dropout): parses back to itself."""
        out = asdict(self)
        if self.strategy != "topk_dropout":
            del out["n_drop"]
        return out

    def k_for(self, names: int) -> int:
        """Names per leg for a session with ``names`` scored names (never more than a leg can hold)."""
        wanted = int(self.k) if self.k >= 1 else max(self.k_min, round(self.k * names))
        room = names // 2 if self.strategy == "long_short" else names
        return max(0, min(wanted, room))

    def n_drop_for(self, k: int) -> int:
        """Names replaced per rebalance at most, for ``k`` held names."""
        return int(self.n_drop) if self.n_drop >= 1 else max(1, round(self.n_drop * k))

    @property
    def long_only(self) -> bool:
        """No short positions (every strategy but long_short)."""
        return self.strategy != "long_short"


_TYPES: dict[str, tuple[type, ...]] = {
    "strategy": (str,), "score": (str,), "sector_neutral": (bool,), "k_min": (int,), "horizon": (int,),
    "rebalance": (int, type(None)), "k": (int, float), "n_drop": (int, float), "min_dollar_volume": (int, float),
    "max_weight": (int, float, type(None)), "turnover_cap": (int, float, type(None)),
    "leverage": (int, float, type(None)),
}  # fmt: skip


def _coerce(key: str, value: Any) -> Any:
    """``value`` checked against the key's type (an integral float counts as an int; a bool is no number)."""
    allowed = _TYPES[key]
    if isinstance(value, float) and int in allowed and float not in allowed and value.is_integer():
        return int(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ValueError(f"{key}: must be {'/'.join(t.__name__ for t in allowed)} (got {value!r})")
    if not isinstance(value, allowed):
        names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ValueError(f"{key}: must be {names} (got {value!r})")
    if isinstance(value, str):
        return value.strip().lower() if key == "strategy" else value.strip()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: must be finite (got {value!r})")
    return value


def parse_portfolios(raw: Mapping[str, Any]) -> dict[str, Strategy]:
    """The portfolios setting (name -> strategy + parameters) as specs; one ValueError naming the portfolio and key."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"must be a mapping of portfolio name -> strategy parameters (got {raw!r})")
    out = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not PORTFOLIO_NAME.match(name):
            raise ValueError(f"portfolio name {name!r}: use a lower-case letter, then letters, digits, '_' or '-'")
        out[name] = Strategy.parse(spec, name)
    return out


def validate_portfolios(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The portfolios setting validated and normalized (every parameter written out)."""
    return {name: spec.as_dict() for name, spec in parse_portfolios(raw).items()}
