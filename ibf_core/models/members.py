"""The member protocol and the one registry of members (name -> class) that training, prediction and the bundle use.

A member declares what it is (trained or a baseline, torch-backed, whether it reads the robust-scaled neural
inputs, the sessions of history one forecast needs and reads, the sessions one training needs
(``train_sessions``, which sizes the windows on short histories), the bundle sub-folder it saves into) and
implements ``fit``, ``predict``, ``save`` and ``load``; ``forecastable`` says which origins it can forecast
(the others get NaN and the ensemble renormalizes over the members that can). Every member of a bundle is built from the same
``Inputs`` (the configuration and the training-window statistics the select step fixed), so adding a member
is one class and one ``register`` call: ``train_models``, ``forecast``, ``save_bundle`` and ``load_bundle``
need no change.

Built-in members: ``naive`` (random walk: zero return) and ``drift`` (trailing mean return) are baselines
every bundle holds; ``lstm`` and ``tft`` wrap ``neural.py``; ``gbdt`` (raw features) and ``gbdt_rank``
(cross-sectionally rank-normalised features and labels, scaled back to a return) wrap ``gbdt.py``;
``reversal_1``, ``reversal_5``, ``momentum_20`` and ``momentum_12_1`` are the textbook factors of ``factors.py``
(a centred cross-sectional rank scaled to a return, like ``gbdt_rank``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ibf_core.features.pipeline import feature_by_name
from ibf_core.models import ModelLoadError, factors, gbdt, names, neural, neural_script
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import RobustScaler
from ibf_core.models.names import baseline_members, neural_members, trained_members


@dataclass(frozen=True)
class Inputs:
    """What every member of one bundle shares: the configuration and statistics of the training window."""

    config: ModelConfig
    scaler: RobustScaler | None  # fitted when a member has ``scaled_inputs``
    y_sigma: float  # standard deviation of the daily log return (the neural members' target scale)
    features: list[str]  # tabular features with data in the training window (``gbdt_features`` in bundle.json)


class Member(ABC):
    """One forecaster of the ensemble; subclasses set the class-level capabilities and implement the methods."""

    name: ClassVar[str]
    trained: ClassVar[bool] = True  # False: a baseline (nothing to fit or save, no ensemble weight)
    neural: ClassVar[bool] = False  # torch-backed (NeuralForecast)
    scaled_inputs: ClassVar[bool] = False  # reads the robust-scaled neural features: the bundle fits a scaler
    finite: ClassVar[bool] = True  # False: NaN forecasts are allowed even where ``forecastable`` holds
    reported: ClassVar[bool] = True  # False: no ``pred_<name>`` column in the predictions table
    folder: ClassVar[str | None] = None  # bundle sub-folder its files go into; None: nothing on disk

    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs

    @property
    def config(self) -> ModelConfig:
        return self.inputs.config

    @classmethod
    def history_sessions(cls, config: ModelConfig) -> int:
        """Usable sessions past the feature warm-up, ending at the origin, that one forecast needs."""
        return 1

    @classmethod
    def lookback_sessions(cls, config: ModelConfig) -> int:
        """Sessions of panel rows before an origin that one forecast reads (may exceed what it needs)."""
        return cls.history_sessions(config)

    @classmethod
    def train_sessions(cls, config: ModelConfig) -> int:
        """Sessions of history up to the training end one fit needs (``config``'s early-stopping tail included)."""
        return 0

    def forecastable(self, panel: pd.DataFrame, origins: pd.DataFrame) -> np.ndarray:
        """Per origin: whether this member can forecast it (its ``predict`` gives NaN for the others)."""
        return np.ones(len(origins), dtype=bool)

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
        """Fit on the usable training rows; returns facts for the record (``seconds``, ``steps``, ...)."""
        return {}

    @abstractmethod
    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        """One ``h<h>`` column per horizon, row i for ``origins`` row i (``origins`` are rows of ``panel``)."""

    def save(self, folder: Path) -> None:
        """Write the fitted state into ``folder`` (the bundle's ``folder`` sub-folder)."""

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> Member:
        """The member saved in ``folder``; a baseline is rebuilt from ``inputs`` alone."""
        return cls(inputs)

    def _columns(self, values: dict[int, np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame({f"h{h}": values[h] for h in self.config.horizons})


_REGISTRY: dict[str, type[Member]] = {}


def register(cls: type[Member], replace: bool = False) -> type[Member]:
    """Add a member class under ``cls.name`` (usable as a class decorator)."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} has no member name")
    if cls.name == "ensemble":
        raise ValueError("'ensemble' names the weighted combination of the members, it cannot be a member")
    if cls.name in _REGISTRY and not replace and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"member {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    names.add(cls.name, cls.trained, cls.neural)
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    names.remove(name)


def member_class(name: str) -> type[Member]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown member {name!r}; registered: {', '.join(_REGISTRY)}") from None


def registered() -> dict[str, type[Member]]:
    """Every registered member class by name, in registration order."""
    return dict(_REGISTRY)


def bundle_members(config: ModelConfig) -> tuple[str, ...]:
    """The members a bundle of ``config`` holds: every baseline, then ``config.members`` in their order."""
    return (*baseline_members(), *config.members)


@register
class Naive(Member):
    """Random walk: the h-day log return forecast is zero."""

    name = "naive"
    trained = False
    reported = False  # always 0: a column of zeros says nothing

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        return self._columns({h: np.zeros(len(origins)) for h in self.config.horizons})


def drift_forecast(panel: pd.DataFrame, window: int) -> pd.Series:
    """Trailing mean daily log return (``window`` sessions, at least 20) per row: the drift baseline's daily rate."""
    rolling = panel.groupby("symbol", sort=False)["y"].rolling(window, min_periods=20)
    return rolling.mean().reset_index(level=0, drop=True)


@register
class Drift(Member):
    """Trailing mean daily log return x h (NaN where fewer than 20 sessions of returns exist)."""

    name = "drift"
    trained = False
    finite = False

    @classmethod
    def lookback_sessions(cls, config: ModelConfig) -> int:
        return config.drift_baseline_sessions

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        rate = drift_forecast(panel, self.config.drift_baseline_sessions).reindex(origins.index).to_numpy()
        return self._columns({h: rate * h for h in self.config.horizons})


class NeuralMember(Member):
    """A global NeuralForecast model (``neural.py``) saved as safetensors + JSON under ``neural/<name>/``."""

    neural = True
    scaled_inputs = True

    def __init__(self, inputs: Inputs, model: Any = None, statics: dict[str, list[int]] | None = None,
                 folder: Path | None = None) -> None:
        super().__init__(inputs)
        self._model = model  # a fitted NeuralForecast
        self._folder = folder  # a saved model not loaded yet: loaded on first use
        self._network: Any = None  # its traced network (neural_script), when one was saved with it
        self.statics = statics or {}  # one-hot vocabulary of the static covariates (TFT with categoricals only)

    @property
    def model(self) -> Any:
        """The fitted NeuralForecast; a saved one is loaded on first use (``load``)."""
        if self._model is None and self._folder is not None:
            try:
                self._model = neural.load(self._folder)
            except Exception as exc:  # the library's own load error, named with the files it came from
                raise ModelLoadError(f"{self._folder}: cannot load model files ({type(exc).__name__}: {exc})") from exc
            self._folder = None
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model, self._folder, self._network = value, None, None

    @property
    def network(self) -> Any:
        """What forecasts: the fitted model in memory, else the traced network saved with it (torch only, ~3 s to
        import instead of NeuralForecast's ~9 s), else the saved NeuralForecast model."""
        if self._model is not None:
            return self._model
        if self._network is None and self._folder is not None:
            try:
                self._network = neural_script.load(self._folder)  # None when the member was saved without one
            except Exception as exc:  # torch's own load error, named with the files it came from
                raise ModelLoadError(f"{self._folder}: cannot load the traced network ({type(exc).__name__}: {exc})") from exc
        return self._network if self._network is not None else self.model

    @classmethod
    def history_sessions(cls, config: ModelConfig) -> int:
        return config.input_size

    @classmethod
    def train_sessions(cls, config: ModelConfig) -> int:
        # inputs warm up first (nothing is back-filled), then one window and the early-stopping tail
        return neural_warmup(config) + config.input_size + config.max_horizon + config.early_stopping_sessions

    def forecastable(self, panel: pd.DataFrame, origins: pd.DataFrame) -> np.ndarray:
        return neural.forecastable(panel, origins, self.config, list(self.inputs.scaler.center))

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
        self.statics = neural.static_vocabulary(self.name, train, self.inputs.features)
        self.model, facts = neural.fit(self.name, train, self.config, self.inputs.scaler, self.inputs.y_sigma, device, self.statics)
        return facts

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        frame = neural.predict(self.network, self.name, panel, origins, self.config, self.inputs.scaler, self.inputs.y_sigma, self.statics)
        return frame[[f"h{h}" for h in self.config.horizons]].reset_index(drop=True)

    def save(self, folder: Path) -> None:
        neural.save(self.model, folder, self.statics)

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> Member:
        """The member, its network loaded on first use: loading imports torch, Lightning and NeuralForecast (~9 s
        on this machine), which a caller that forecasts nothing (every origin carried) never pays. Importing them
        on a thread beside the caller's reads saved under 1 s here (imports hold the GIL), so it is not done."""
        return cls(inputs, None, neural.load_statics(folder), folder=folder)


@register
class LSTM(NeuralMember):
    name = "lstm"
    folder = "neural/lstm"


@register
class TFT(NeuralMember):
    name = "tft"
    folder = "neural/tft"


@register
class GBDT(Member):
    """One LightGBM booster per horizon on every feature with data (``gbdt.py``), text models ``gbdt/h<h>.txt``."""

    name = "gbdt"
    folder = "gbdt"

    def __init__(self, inputs: Inputs, boosters: dict[int, Any] | None = None, categories: dict[str, list[int]] | None = None) -> None:
        super().__init__(inputs)
        self.boosters = boosters or {}
        self.categories = categories or {}  # categorical feature -> codes seen in training (``gbdt.matrix``)

    @classmethod
    def train_sessions(cls, config: ModelConfig) -> int:
        # fitting origins (at least one horizon of them), a purge of h, the early-stopping origins, their targets
        return 3 * config.max_horizon + config.early_stopping_sessions

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
        self.categories = gbdt.category_vocabulary(train, self.inputs.features)
        self.boosters, facts = gbdt.fit(train, self.inputs.features, self.config, self.categories)
        return facts

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        return gbdt.predict(self.boosters, origins, self.inputs.features, self.categories).reset_index(drop=True)

    def save(self, folder: Path) -> None:
        gbdt.save(self.boosters, folder, self.categories)

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> Member:
        return cls(inputs, gbdt.load(folder, inputs.config.horizons), gbdt.load_categories(folder))


@register
class GBDTRank(Member):
    """Cross-sectional LightGBM per horizon on per-session ranks, scaled to an h-day return (``gbdt.py``), ``gbdt_rank/``."""

    name = "gbdt_rank"
    folder = "gbdt_rank"

    def __init__(
        self,
        inputs: Inputs,
        boosters: dict[int, Any] | None = None,
        scales: dict[int, float] | None = None,
        categories: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(inputs)
        self.boosters = boosters or {}  # h -> booster; a horizon without one (nothing to rank) forecasts 0
        self.scales = scales or {}  # h -> return per unit of rank score, fitted on the training rows
        self.categories = categories or {}

    @classmethod
    def train_sessions(cls, config: ModelConfig) -> int:
        return GBDT.train_sessions(config)  # the same windows as gbdt

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
        self.categories = gbdt.category_vocabulary(train, self.inputs.features)
        self.boosters, self.scales, facts = gbdt.fit_rank(train, self.inputs.features, self.config, self.categories)
        return facts

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        frame = gbdt.predict_rank(self.boosters, self.scales, panel, origins, self.inputs.features, self.config.horizons, self.categories)
        return frame.reset_index(drop=True)

    def save(self, folder: Path) -> None:
        gbdt.save_rank(self.boosters, self.scales, self.inputs.features, folder, self.categories)

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> Member:
        return cls(inputs, *gbdt.load_rank(folder))


class FactorMember(Member):
    """A textbook price factor as a member (``factors.py``): its centred cross-sectional rank x a fitted return scale."""

    factor_name: ClassVar[str]
    finite = False  # NaN where the factor lacks history (12-1 momentum needs 253 sessions)

    def __init__(self, inputs: Inputs, scales: dict[int, float] | None = None, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(inputs)
        self.scales = scales or {}  # h -> return per unit of centred rank, fitted on the training rows
        self.evidence = evidence or {}  # str(h) -> training-window rank IC {"mean", "t", "n_dates"}

    @property
    def factor(self):
        return factors.FACTOR_BY_NAME[self.factor_name]

    @classmethod
    def history_sessions(cls, config: ModelConfig) -> int:
        return factors.FACTOR_BY_NAME[cls.factor_name].history_sessions

    @classmethod
    def train_sessions(cls, config: ModelConfig) -> int:
        # one horizon of realized targets fits the scale; a factor without history forecasts nothing (NaN)
        return config.max_horizon

    def forecastable(self, panel: pd.DataFrame, origins: pd.DataFrame) -> np.ndarray:
        values = factors.predict_factor({1: 1.0}, panel, origins, self.factor, (1,))["h1"].to_numpy()
        return np.isfinite(values)

    def importance_columns(self) -> list[str]:
        """No feature group: a factor reads adjusted closes only (permutation importance leaves it unchanged)."""
        return []

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
        self.scales, facts = factors.fit_factor(train, self.factor, self.config.horizons)
        self.evidence = facts["training_rank_ic"]
        return facts

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        return factors.predict_factor(self.scales, panel, origins, self.factor, self.config.horizons).reset_index(drop=True)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"factor": self.factor_name, "scales": {str(h): v for h, v in self.scales.items()}, "training_rank_ic": self.evidence}
        (folder / "factor.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> Member:
        state = json.loads((folder / "factor.json").read_text())
        return cls(inputs, {int(h): float(v) for h, v in state["scales"].items()}, state.get("training_rank_ic", {}))


def _factor_member(name: str) -> type[Member]:
    """The member class of factor ``name`` (``factors.FACTORS``), saved under ``factors/<name>/``."""
    return register(type(f"Factor_{name}", (FactorMember,), {"name": name, "factor_name": name, "folder": f"factors/{name}"}))


REVERSAL_1 = _factor_member("reversal_1")
REVERSAL_5 = _factor_member("reversal_5")
MOMENTUM_20 = _factor_member("momentum_20")
MOMENTUM_12_1 = _factor_member("momentum_12_1")


def factor_members() -> tuple[str, ...]:
    return tuple(n for n, c in _REGISTRY.items() if issubclass(c, FactorMember))


def neural_warmup(config: ModelConfig) -> int:
    """Bars before every configured neural input exists (the longest of their own warm-ups)."""
    registry = feature_by_name()
    return max((registry[name].min_history for name in config.neural_features if name in registry), default=1) - 1


__all__ = [
    "Inputs",
    "Member",
    "FactorMember",
    "baseline_members",
    "bundle_members",
    "factor_members",
    "member_class",
    "neural_members",
    "neural_warmup",
    "register",
    "registered",
    "trained_members",
    "unregister",
]
