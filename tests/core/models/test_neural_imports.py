"""The neural members' libraries load without ``transformers``, which stays importable afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, sys
from ibf_core.models.neural import import_libraries
import_libraries()
loaded = "transformers" in sys.modules
import neuralforecast.models.timellm as timellm
from neuralforecast.models import LSTM, TFT
import torchmetrics.utilities.imports as tm
bert_skipped = not bool(tm._TRANSFORMERS_GREATER_EQUAL_4_4)
import transformers
print(json.dumps({"loaded": loaded, "timellm": timellm.IS_TRANSFORMERS_INSTALLED, "bert_skipped": bert_skipped,
                  "after": transformers.__name__, "lstm": LSTM.__name__}))
"""


def test_neuralforecast_is_imported_without_transformers_and_transformers_still_imports_after():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    # Before: torchmetrics (BERTScore) and NeuralForecast (TimeLLM) imported transformers, ~2 s of CPU per process.
    assert facts == {"loaded": False, "timellm": False, "bert_skipped": True, "after": "transformers", "lstm": "LSTM"}
