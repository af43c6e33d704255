"""Hyper-parameters of every member, JSON-serializable so a bundle records exactly what trained it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ibf_core.models import HORIZONS
from ibf_core.models.names import trained_members
from ibf_core.settings import Settings

# Heavy imports (torch) stay inside the functions that need them: importing this module loads none of them.

# Compact, dense, scale-free inputs for the neural members; GBDT takes every feature that has data.
DEFAULT_NEURAL_FEATURES: tuple[str, ...] = (
    "logret_5",
    "logret_20",
    "rsi_14",
    "macd_hist",
    "bb_pctb_20",
    "sma_ratio_50",
    "hv_20",
    "hv_60",
    "volume_z_20",
    "hl_range",
    "gap_overnight",
    "rank_ret_20",
    "corr_60",
)

# Integer-coded categorical features (float64 codes, NaN when unknown, constant over a symbol's history): GBDT
# takes them as LightGBM categoricals (never rank-normalised), TFT as one-hot static covariates. Only the ones
# present among a bundle's features are used, so bundles trained before they existed are unchanged.
CATEGORICAL_FEATURES: tuple[str, ...] = ("sector_code", "industry_code")


def _setting_default(name: str) -> Any:
    """The default ``Settings`` declares for ``name``: a default both define is written once, there."""
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    return tuple(value) if isinstance(value, list) else value


# Fields renamed because their names said "days" for session counts (bundles saved earlier still load).
_RENAMED = {"validation_days": "validation_sessions", "inner_validation_days": "early_stopping_sessions", "drift_window": "drift_baseline_sessions"}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides a trained model besides the data and the cut-off."""

    horizons: tuple[int, ...] = HORIZONS
    members: tuple[str, ...] = _setting_default("model_members")  # trained members (baselines are always in)
    # Windows (sessions). Validation origins sit after a purge gap of max(horizons) sessions behind the
    # training data, so no validation target overlaps a training target.
    validation_sessions: int = _setting_default("model_validation_sessions")
    # Evidence a horizon's validation window must hold (dates / h) before the ensemble trusts it (``ensemble.py``)
    min_independent_targets: int = _setting_default("model_min_independent_targets")
    early_stopping_sessions: int = 40  # tail of the training window used for early stopping
    drift_baseline_sessions: int = 252  # trailing sessions of the drift baseline's mean return
    # Neural members
    input_size: int = _setting_default("model_input_size")
    max_steps: int = _setting_default("model_max_steps")
    val_check_steps: int = 20
    early_stop_patience: int = 5  # validation checks without improvement
    lr_patience: int = 2  # checks without improvement before the learning rate is halved
    learning_rate: float = 1e-3
    batch_size: int = 32
    windows_batch_size: int = 256
    lstm_hidden_size: int = 32
    tft_hidden_size: int = 16
    neural_features: tuple[str, ...] = DEFAULT_NEURAL_FEATURES
    # GBDT member
    gbdt_rounds: int = 400
    gbdt_learning_rate: float = 0.03
    gbdt_leaves: int = 15
    gbdt_min_leaf: int = 100
    gbdt_early_stopping: int = 40
    gbdt_cat_min_group: int = 100  # LightGBM min_data_per_group for the categorical features
    gbdt_cat_smooth: float = 20.0  # LightGBM cat_smooth and cat_l2 for the categorical features
    seed: int = _setting_default("model_seed")
    threads: int = 2
    # Feature importance (changes no forecast): validation origins permuted at most, whole dates sampled beyond
    importance_max_origins: int = _setting_default("model_importance_max_origins")

    def __post_init__(self) -> None:
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive integers, got {self.horizons}")
        unknown = sorted(set(self.members) - set(trained_members()))
        if unknown:
            raise ValueError(f"unknown member(s) {unknown}; choose from {trained_members()}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members repeat: {self.members}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        data = {_RENAMED.get(k, k): v for k, v in data.items()}  # bundles saved before the renames
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "ModelConfig":
        """The configuration ``IBF_MODEL_*`` settings describe (``overrides`` win)."""
        values = dict(
            members=tuple(settings.model_members),
            max_steps=settings.model_max_steps,
            input_size=settings.model_input_size,
            validation_sessions=settings.model_validation_sessions,
            seed=settings.model_seed,
            min_independent_targets=settings.model_min_independent_targets,
            importance_max_origins=settings.model_importance_max_origins,
        )
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def resolve_device(accelerator: str) -> str:
    """``auto|cpu|gpu`` -> ``cpu`` or ``gpu``; asking for a GPU where CUDA is absent is an error, not a fallback."""
    import torch

    if accelerator not in ("auto", "cpu", "gpu"):
        raise ValueError(f"accelerator must be auto, cpu or gpu, got {accelerator!r}")
    cuda = torch.cuda.is_available()
    if accelerator == "gpu" and not cuda:
        raise RuntimeError("IBF_ACCELERATOR=gpu but torch sees no CUDA device (use auto to fall back to the CPU)")
    if accelerator == "auto":
        return "gpu" if cuda else "cpu"
    return accelerator


def device_description(device: str) -> str:
    import torch

    if device == "gpu":
        return f"gpu ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


__all__ = ["CATEGORICAL_FEATURES", "DEFAULT_NEURAL_FEATURES", "ModelConfig", "device_description", "resolve_device"]
