"""Neural forecasts without NeuralForecast: the traced network saved with a member (``neural_script``) gives exactly
NeuralForecast's numbers, imports neither NeuralForecast nor Lightning, and a network that cannot be traced exactly
is named in ``network.json`` and forecast through NeuralForecast."""

import datetime as dt
import json
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from ibf_core.features.pipeline import compute_features
from ibf_core.models import neural, neural_script
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.models.members import member_class
from ibf_core.models.neural_script import ScriptedNetwork
from ibf_core.models.predict import origin_rows
from ibf_core.models.training import select
from ibf_core.sources.sample import load_sample_bars

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
CUTOFF = dt.date(2012, 6, 29)
TINY = ModelConfig(members=("lstm", "tft"), max_steps=2, val_check_steps=100, input_size=20, early_stopping_sessions=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    sample = load_sample_bars()
    bars = sample[sample["symbol"].isin(SYMBOLS) & (sample["date"] >= "2010-01-01")].reset_index(drop=True)
    panel = build_panel(bars, compute_features(bars, benchmark=None), TINY.horizons)
    chosen = select(panel, CUTOFF, TINY)
    folder = tmp_path_factory.mktemp("members")
    members = {}
    for name in ("lstm", "tft"):
        member = member_class(name)(chosen.inputs)
        member.fit(chosen.train)
        member.save(folder / name)
        members[name] = member
    sessions = sorted(panel.loc[panel["date"] > pd.Timestamp(CUTOFF), "date"].unique())[:6]
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp(d) for d in sessions])
    return panel, chosen.inputs, members, folder, origins


def test_a_saved_member_forecasts_through_its_traced_network_exactly_as_neuralforecast(trained, monkeypatch):
    panel, inputs, members, folder, origins = trained
    assert len(origins) == 24
    for name, fitted in members.items():
        meta = json.loads((folder / name / neural_script.NETWORK_META).read_text())
        assert meta["exported"] is True and (folder / name / neural_script.NETWORK_FILE).is_file()
        loaded = member_class(name).load(folder / name, inputs)
        assert isinstance(loaded.network, ScriptedNetwork)
        expected = fitted.predict(panel, origins)  # the fitted NeuralForecast model in memory
        assert np.isfinite(expected.to_numpy()).all()
        pd.testing.assert_frame_equal(loaded.predict(panel, origins), expected)
        # several predict chunks and batches (of 5 origins, 3 series): still NeuralForecast's numbers, bit for bit
        monkeypatch.setattr(neural, "PREDICT_CHUNK_ORIGINS", 5)
        monkeypatch.setattr(neural, "PREDICT_BATCH_SERIES", 3)
        batched = fitted.predict(panel, origins)
        pd.testing.assert_frame_equal(loaded.predict(panel, origins), batched)
        monkeypatch.undo()


def test_a_forecast_from_a_saved_member_imports_neither_neuralforecast_nor_lightning(trained, tmp_path):
    panel, inputs, members, folder, origins = trained
    (tmp_path / "case.pkl").write_bytes(pickle.dumps((panel, inputs, origins)))
    code = f"""
import pickle, sys
from ibf_core.models.members import member_class
panel, inputs, origins = pickle.loads(open({str(tmp_path / 'case.pkl')!r}, 'rb').read())
for name in ("lstm", "tft"):
    member_class(name).load({str(folder)!r} + "/" + name, inputs).predict(panel, origins).to_pickle({str(tmp_path)!r} + "/" + name + ".pkl")
print(sorted(m for m in ("neuralforecast", "pytorch_lightning", "lightning_fabric", "torch") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "['torch']"
    for name, fitted in members.items():
        pd.testing.assert_frame_equal(pd.read_pickle(tmp_path / f"{name}.pkl"), fitted.predict(panel, origins))


def test_a_member_saved_without_a_traced_network_forecasts_through_neuralforecast(trained, tmp_path):
    panel, inputs, members, folder, origins = trained
    shutil.copytree(folder / "lstm", tmp_path / "lstm")
    for file in (neural_script.NETWORK_FILE, neural_script.NETWORK_META):
        (tmp_path / "lstm" / file).unlink()
    loaded = member_class("lstm").load(tmp_path / "lstm", inputs)
    assert not isinstance(loaded.network, ScriptedNetwork)
    pd.testing.assert_frame_equal(loaded.predict(panel, origins), members["lstm"].predict(panel, origins))


def test_a_network_that_cannot_be_traced_exactly_is_named_and_not_saved(tmp_path):
    neural.import_libraries()
    from neuralforecast.models import LSTM

    recurrent = LSTM(h=5, input_size=10, recurrent=True, scaler_type="identity", max_steps=1, logger=False)
    scaled = LSTM(h=5, input_size=10, scaler_type="robust", max_steps=1, logger=False)
    assert neural_script.export(types.SimpleNamespace(models=[scaled]), tmp_path) == "scaler_type 'robust' (ibf trains with 'identity')"
    reason = neural_script.export(types.SimpleNamespace(models=[recurrent]), tmp_path)
    assert reason == "a recurrent model"
    assert json.loads((tmp_path / neural_script.NETWORK_META).read_text()) == {"format": 1, "exported": False, "reason": reason}
    assert not (tmp_path / neural_script.NETWORK_FILE).exists() and neural_script.load(tmp_path) is None


def test_a_gpu_trained_network_is_traced_from_a_cpu_copy_that_forecasts_the_same(trained, tmp_path):
    """The copy path a GPU-trained model takes (no GPU here: the CPU model is copied the same way)."""
    panel, inputs, members, folder, origins = trained
    fitted = members["tft"]
    shutil.copytree(folder / "tft", tmp_path / "tft")
    model = fitted.model.models[0]
    copy = neural_script._cpu_copy(model)
    assert copy is not model and getattr(model, "_trainer", None) is not None  # the fitted model keeps its trainer
    assert neural_script._trace(copy, tmp_path / "tft") is None
    loaded = member_class("tft").load(tmp_path / "tft", inputs)
    assert isinstance(loaded.network, ScriptedNetwork)
    pd.testing.assert_frame_equal(loaded.predict(panel, origins), fitted.predict(panel, origins))
