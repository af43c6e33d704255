"""How much memory one training will take, estimated before it starts, and the refusal when the machine lacks it.

A training that the kernel's OOM killer ends after minutes tells the user nothing they can act on; an estimate
that is refused up front names the numbers and the settings that lower them. The estimate is a sum of the
parts that grow with the data, each a measured constant times its size (measured on a 2-core CPU machine,
``benchmarks/bench_universe.py``; peak RSS per phase is recorded with every bundle, ``facts["resources"]``):

* ``runtime``: the interpreter with pandas, torch, Lightning, NeuralForecast and LightGBM imported (~650 MiB),
  Dagster and MLflow around them;
* ``panel``: the modelling panel (rows x columns of float64) held about three times (the panel, its truncation
  at the cut-off, the training rows);
* ``gbdt``: LightGBM's binned matrix and the rank-normalised copy, per GBDT member;
* ``neural fit``: NeuralForecast unfolds every window of a batch of ``batch_size`` series before sampling
  ``windows_batch_size`` of them, so a batch costs series length x window x inputs;
* ``neural predict``: one chunk of ``neural.PREDICT_CHUNK_ORIGINS`` windows (the bound of every forecast) and
  feature importance's permuted copies of the validation rows.

Calibrated on 500 symbols x 1 year, default members (`ibf train`: measured peak 2.92 GiB, estimate 2.97 GiB); at
500 symbols x 10 years it errs on the safe side (estimate 9.45 GiB, measured 7.38 GiB).

The neural parts do not add up across members (members train one after the other); the largest counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ibf_core.models import ModelDataError

# Heavy imports (numpy, pandas, talib) stay inside the functions that need them:
# importing this module loads none of them.

RUNTIME_MIB = 1100.0  # `ibf train`'s process: the above plus Dagster, MLflow and Lightning's trainer
PANEL_COPIES = 3.0
GBDT_BYTES_PER_CELL = 12.0  # float32 matrix + LightGBM bins + the rank member's normalised copy
NEURAL_FIT_COPIES = 3.0  # the unfolded batch, its padded/filtered copies
NEURAL_PREDICT_MIB = 1200.0  # a chunk of 8,192 TFT windows (0.5-0.6 GiB) + importance's permuted copies


@dataclass(frozen=True)
class Footprint:
    """An estimate in MiB, by part, of one training's peak memory."""

    parts: dict[str, float]
    symbols: int
    sessions: int  # the longest symbol's sessions up to the cut-off

    @property
    def total_mib(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = ", ".join(f"{name} {value / 1024:.1f}" for name, value in self.parts.items() if value >= 50)
        return f"{self.total_mib / 1024:.1f} GiB ({shown} GiB)"


def estimate(rows: int, columns: int, symbols: int, sessions: int, config) -> Footprint:
    """The peak memory of ``train_models`` on a panel of ``rows`` x ``columns`` (``symbols``, the longest history
    ``sessions``) with ``config``'s members."""
    from ibf_core.models.members import FactorMember, member_class
    from ibf_core.models.neural import PREDICT_CHUNK_ORIGINS, future_known_features

    mib = 2.0**20
    parts = {"runtime": RUNTIME_MIB, "panel": rows * columns * 8 * PANEL_COPIES / mib}
    # a factor member holds one column per panel row: nothing next to the panel
    gbdt = [m for m in config.members if not member_class(m).neural and not issubclass(member_class(m), FactorMember)]
    neural = [m for m in config.members if member_class(m).neural]
    if gbdt:
        parts["gbdt"] = rows * columns * GBDT_BYTES_PER_CELL / mib
    if neural:
        inputs = len(config.neural_features) + len(future_known_features()) + 4  # y, observed, mask, ids
        window = config.input_size + config.max_horizon
        parts["neural fit"] = min(config.batch_size, symbols) * sessions * window * inputs * 4 * NEURAL_FIT_COPIES / mib
        parts["neural predict"] = NEURAL_PREDICT_MIB * min(1.0, rows / PREDICT_CHUNK_ORIGINS)
    return Footprint(parts, symbols, sessions)


class TrainingMemoryError(ModelDataError):
    """The estimated peak of a training exceeds the memory available; the message names both and the way out."""


def check(footprint: Footprint, available_mib: float | None, members: tuple[str, ...]) -> None:
    """Refuse a training whose estimate exceeds ``available_mib`` (None: the platform cannot tell, no check)."""
    if available_mib is None or footprint.total_mib <= available_mib:
        return
    raise TrainingMemoryError(
        f"training needs an estimated {footprint.describe()} for {footprint.symbols} symbols x up to "
        f"{footprint.sessions:,} sessions with members {','.join(members)}, but only {available_mib / 1024:.1f} GiB "
        "is available; lower it with IBF_MODEL_MEMBERS (e.g. gbdt,gbdt_rank), fewer symbols (ibf universe remove) "
        "or a later IBF_HISTORY_START, or set IBF_MODEL_MEMORY_BUDGET_MIB to the memory training may use"
    )
