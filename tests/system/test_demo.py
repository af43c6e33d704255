"""`make demo`'s command end to end, as the README's quick start runs it: the default members, trained and
registered, forecasts and drift scores written; only ibf's own lines on the terminal."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ibf_core.calendar import trading_days

IBF = str(Path(sys.executable).with_name("ibf"))
HOLDOUT_SESSIONS = len(trading_days("2013-01-01", "2013-03-01"))  # the sample's sessions after the demo's cut-off


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_trains_the_default_members_and_forecasts_quietly(ibf_home):
    # Fewer steps than the demo's 200 keep the test short; every default member still trains and is registered.
    quiet_by_ibf = ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL")  # left to ibf's defaults
    env = {**{k: v for k, v in os.environ.items() if k not in quiet_by_ibf}, "IBF_MODEL_MAX_STEPS": "10"}
    done = subprocess.run([IBF, "demo"], env=env, capture_output=True, text=True, timeout=880)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "demo finished" in output
    for noise in ("Downloading artifacts", " INFO mlflow", "Creating initial MLflow database tables"):
        assert noise not in output, noise  # third-party chatter a newcomer should not see
    rows = json.loads(subprocess.run([IBF, "sql", "SELECT count(*) AS n, count(DISTINCT model_version) AS v FROM predictions",
                                      "-f", "json"], env=env, capture_output=True, text=True, check=True).stdout)
    assert rows == [{"n": 4 * 6 * HOLDOUT_SESSIONS, "v": 1}]  # 4 symbols x 6 horizons x the held-out sessions, one version
    books = json.loads(subprocess.run([IBF, "sql", "SELECT portfolio, count(*) AS n, min(date) AS first, max(date) AS last, "
                                       "bool_and(isfinite(nav)) AS finite FROM portfolio_returns GROUP BY portfolio", "-f", "json"],
                                      env=env, capture_output=True, text=True, check=True).stdout)
    # The default portfolio trades the forecasts of the first held-out session at the next close, up to the sample's end.
    assert [(b["portfolio"], b["first"][:10], b["last"][:10], b["finite"]) for b in books] == [
        ("topk", "2013-01-03", "2013-03-01", True)], books
    assert "portfolios (IBF_PORTFOLIOS)" in output and books[0]["n"] == HOLDOUT_SESSIONS - 1
