"""The neural members' networks as TorchScript, so a forecast needs torch and not NeuralForecast or Lightning.

Importing NeuralForecast costs ~9 s of CPU in every process that forecasts (Lightning's ``lightning_fabric`` alone
imports ``torch._dynamo``, scipy.signal and torchmetrics); torch alone ~2-3 s. So when a neural member is saved,
its network (``forward`` and the loss's ``domain_map``) is traced into ``network.pt`` beside NeuralForecast's own
files, with ``network.json`` saying what it reads. A forecast from a loaded bundle then builds the same input
tensors NeuralForecast builds (one window per origin: the input steps, and the future-known inputs of the input
and horizon steps), in its order and batches, and runs the traced network: the same numbers, bit for bit
(``tests/core/models/test_neural_script.py``).

A network is exported only when that holds by construction, and checked on the spot: a direct (not recurrent)
model, no categorical exogenous inputs, a point loss, the identity scaler (ibf scales its inputs itself); a model
trained on a GPU is traced from a CPU copy. And the traced network must give exactly the eager network's output on
example inputs. Otherwise ``network.json`` records why there is no ``network.pt``, and forecasts use NeuralForecast
(same results, slower).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Heavy imports (torch) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger(__name__)
NETWORK_FILE, NETWORK_META = "network.pt", "network.json"
FORMAT = 1


@dataclass
class ScriptedNetwork:
    """A traced network and what it reads (see the module docstring)."""

    module: Any  # torch.jit.ScriptModule
    input_size: int
    h: int
    hist_exog: list[str]
    futr_exog: list[str]
    stat_exog: list[str]
    valid_batch_size: int
    windows_batch_size: int  # NeuralForecast's inference_windows_batch_size (< 0: every window of a batch at once)

    def forecast(self, ids: np.ndarray, arrays: dict[str, np.ndarray], series_per_batch: int) -> np.ndarray:
        """(len(ids) x h) one-step forecasts, row i for ``ids[i]``. ``arrays``: float32 ``insample_y`` (B, L),
        ``insample_mask`` (B, L), ``hist_exog`` (B, L, H), ``futr_exog`` (B, L + h, F), ``stat_exog`` (B, S).

        Series go through the network sorted by id, ``series_per_batch`` at a time and within those
        ``windows_batch_size`` windows at a time: NeuralForecast's batches, so every matrix product sees the same
        rows as it would there."""
        import torch

        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids), self.h), dtype=np.float32)
        names = ("insample_y", "insample_mask", "hist_exog", "futr_exog", "stat_exog")
        inputs = [torch.from_numpy(np.ascontiguousarray(arrays[n][order])) for n in names if n in arrays]
        inputs[0] = inputs[0].unsqueeze(-1)  # insample_y: (B, L, 1), as NeuralForecast parses a window
        step = self.windows_batch_size
        with torch.no_grad():
            for first in range(0, len(ids), series_per_batch):
                last = min(first + series_per_batch, len(ids))
                per_forward = last - first if step < 0 else step
                for lo in range(first, last, per_forward):
                    hi = min(lo + per_forward, last)
                    y_hat = self.module(*(t[lo:hi] for t in inputs))
                    out[order[lo:hi]] = y_hat[..., 0].numpy()
        return out


def _refusal(model: Any) -> str | None:
    """Why ``model`` cannot be exported exactly, or None."""
    if model.RECURRENT:
        return "a recurrent model"
    if getattr(model, "hist_cat_exog_list", None) or getattr(model, "futr_cat_exog_list", None) or getattr(model, "stat_cat_exog_list", None):
        return "categorical exogenous inputs"
    if model.loss.is_distribution_output or getattr(model.loss, "outputsize_multiplier", 1) != 1:
        return f"the loss {type(model.loss).__name__} is not a point loss"
    scaler = getattr(getattr(model, "scaler", None), "scaler_type", None)
    if scaler not in (None, "identity"):  # the traced network leaves out the scaling: exact only for the identity
        return f"scaler_type {scaler!r} (ibf trains with 'identity')"
    return None


def _on_cpu(model: Any) -> Any:
    """``model`` itself when it is on the CPU, else a CPU copy (a GPU-trained model forecasts on the CPU as NeuralForecast
    does when it loads one on a machine without a GPU); its trainer is not copied."""
    if {p.device.type for p in model.parameters()} == {"cpu"}:
        return model
    return _cpu_copy(model)


def _cpu_copy(model: Any) -> Any:
    trainer, model._trainer = getattr(model, "_trainer", None), None
    try:
        return copy.deepcopy(model).cpu()
    finally:
        model._trainer = trainer


def _wrapper(model: Any, with_stat: bool) -> Any:
    import torch

    class Network(torch.nn.Module):
        """NeuralForecast's ``_predict_step_direct_batch`` for the identity scaler: forward, then domain_map."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, insample_y, insample_mask, hist_exog, futr_exog, stat_exog=None):  # noqa: ANN001
            batch = dict(insample_y=insample_y, insample_mask=insample_mask, futr_exog=futr_exog, hist_exog=hist_exog,
                         stat_exog=stat_exog if with_stat else None)
            return self.model.loss.domain_map(self.model(batch))

    return Network().eval()


def _examples(model: Any, rows: int = 3) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    n, h = model.input_size, model.h
    hist, futr, stat = len(model.hist_exog_list), len(model.futr_exog_list), len(model.stat_exog_list)
    normal = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    args = (normal(rows, n, 1), torch.ones(rows, n), normal(rows, n, hist), normal(rows, n + h, futr))
    return args + ((normal(rows, stat),) if stat else ())


def export(nf: Any, folder: Path) -> str | None:
    """Trace ``nf``'s network into ``folder`` (see the module docstring); returns why it was not, or None."""
    model = nf.models[0]
    reason = _refusal(model)
    if reason is None:
        reason = _trace(_on_cpu(model), folder)
    meta: dict[str, Any] = {"format": FORMAT, "exported": reason is None}
    if reason is None:
        meta.update(input_size=int(model.input_size), h=int(model.h), hist_exog=list(model.hist_exog_list),
                    futr_exog=list(model.futr_exog_list), stat_exog=list(model.stat_exog_list),
                    valid_batch_size=int(model.valid_batch_size),
                    windows_batch_size=int(model.inference_windows_batch_size))
    else:
        meta["reason"] = reason
        log.warning("%s: no TorchScript network (%s): its forecasts import NeuralForecast", folder, reason)
    (Path(folder) / NETWORK_META).write_text(json.dumps(meta, indent=1))
    return reason


def _trace(model: Any, folder: Path) -> str | None:
    import torch

    training, scripting = model.training, getattr(model, "_jit_is_scripting", False)
    model.eval()
    model._jit_is_scripting = True  # Lightning's `trainer` property raises outside a Trainer; tracing reads it
    try:
        network = _wrapper(model, bool(model.stat_exog_list))
        args = _examples(model)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(network, args, check_trace=False)
            eager, again = network(*args), traced(*args)
            more = _examples(model, rows=5)
            if not (torch.equal(eager, again) and torch.equal(network(*more), traced(*more))):
                return "the traced network's output differs from the network's"
        torch.jit.save(traced, str(Path(folder) / NETWORK_FILE))
        return None
    except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the NeuralForecast path, said in network.json
        return f"tracing failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    finally:
        model._jit_is_scripting = scripting
        model.train(training)


def load(folder: Path) -> ScriptedNetwork | None:
    """The traced network saved with a model, or None (saved before networks were traced, or not exportable)."""
    meta_file, network_file = Path(folder) / NETWORK_META, Path(folder) / NETWORK_FILE
    if not (meta_file.is_file() and network_file.is_file()):
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT or not meta.get("exported"):
        return None
    import torch

    module = torch.jit.load(str(network_file), map_location="cpu").eval()
    return ScriptedNetwork(module, meta["input_size"], meta["h"], meta["hist_exog"], meta["futr_exog"], meta["stat_exog"],
                           meta["valid_batch_size"], meta["windows_batch_size"])
