"""The production topology as real processes (`ibf stack`): a real PostgreSQL instance, an MLflow tracking server,
the gRPC code location, the webserver, the daemon and the REST API. Through them: a UI-style backfill
(GraphQL ``launchPartitionBackfill``) of a bars and features rectangle, planned as one run, a training run submitted by the API, a UI-style
backfill of predictions, all executed by the daemon's run workers; the model registered on the MLflow server;
then the daemon killed (kill -9) while a backfill runs, restarted, and the backfill finishing; Postgres restarted
under the running webserver and daemon; a run worker killed mid-run (its run marked failed, the warehouse as it
was, the relaunch succeeding)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import httpx
import pytest

from ibf_core.settings import get_settings
from ibf_dagster.stack import backfills

KEY = "stack-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
def _backfill(web: str, assets: list[str], keys: list[str]) -> list[dict]:
    """Launch a backfill as the UI's partition dialog does and wait for the daemon to finish it; its runs."""
    return _finished(web, backfills.launch(web, assets, keys))


def _finished(web: str, backfill_id: str) -> list[dict]:
    found = backfills.wait(web, backfill_id)
    failed = [r["runId"] for r in found["runs"] if r["status"] != "SUCCESS"]
    assert found["status"] in ("COMPLETED_SUCCESS", "COMPLETED"), (found, [backfills.failures(web, run_id) for run_id in failed])
    assert found["runs"] and not failed, (found, [backfills.failures(web, run_id) for run_id in failed])
    return found["runs"]


RUN_EVENTS = """
query Events($id: ID!) {
  logsForRun(runId: $id) { ... on EventConnection { events { __typename ... on MessageEvent { message } } } }
}"""
_RUN_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


def _kill_run_worker_mid_step(web: str, backfill_id: str, deadline: float) -> None:
    """``kill -9`` the run worker of the backfill's first run as soon as its step has started (the code server
    logs the worker's PID in the run's events)."""
    while time.monotonic() < deadline:
        runs = backfills.graphql(web, backfills.STATUS, {"id": backfill_id})["partitionBackfillOrError"].get("runs") or []
        for run in runs:
            if run["status"] != "STARTED":
                continue
            events = backfills.graphql(web, RUN_EVENTS, {"id": run["runId"]})["logsForRun"].get("events", [])
            pids = [int(m[1]) for e in events if (m := _RUN_PID.search(e.get("message") or ""))]
            if pids and any(e["__typename"] == "ExecutionStepStartEvent" for e in events):
                os.kill(pids[0], signal.SIGKILL)
                return
        time.sleep(0.05)
    raise AssertionError("no step of the backfill started")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_topology_runs_ui_backfills_training_and_predictions_through_the_daemon(ibf_home, monkeypatch):
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import sync_universe
    from ibf_dagster.stack.run import stack

    for name, value in {"IBF_UNIVERSE": "AAPL,MSFT", "IBF_HISTORY_START": "2011-01-01", "IBF_DATE_PARTITIONS": "year",
                        "IBF_MODEL_MEMBERS": "gbdt", "IBF_ACCELERATOR": "cpu",
                        "IBF_API_KEYS": hashlib.sha256(KEY.encode()).hexdigest(), "IBF_API_RATE_LIMIT": "0"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    saved = dict(os.environ)  # the stack exports DAGSTER_HOME and the instance URL into this process
    try:
        # A throw-away cluster: pytest's tmp folders are root-only, out of the postgres user's reach when tests run as
        # root. The default cluster under IBF_HOME/stack/postgres is tested in test_stack_postgres.py.
        with stack(get_settings(), throwaway_postgres=True) as running:
            web, api = running.urls["webserver"], running.urls["api"]
            sync_universe(get_instance(running.settings), ["AAPL", "MSFT"])
            keys = [f"{year}|{symbol}" for year in ("2011", "2012", "2013") for symbol in ("AAPL", "MSFT")]
            runs = _backfill(web, ["market_bars", "features"], keys)
            # The 2 x 3 rectangle is one run (per asset level at most), not one per year (compat.RectangleRunCoordinator)
            instance = get_instance(running.settings)
            ranges = {(tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
                      for tags in (instance.get_run_by_id(r["runId"]).tags for r in runs)}
            assert len(runs) <= 2 and ranges == {("2011|AAPL", "2013|MSFT")}, (runs, ranges)

            with httpx.Client(base_url=api, timeout=120) as client:
                answer = client.post("/retrain", json={"cutoff": "2012-12-31"}, headers=AUTH)
                assert answer.status_code == 202, answer.text
                run_id = answer.json()["run_id"]
                deadline = time.monotonic() + 420
                while (run := client.get(f"/runs/{run_id}", headers=AUTH).json())["status"] not in ("SUCCESS", "FAILURE", "CANCELED"):
                    assert time.monotonic() < deadline, run
                    time.sleep(2)
                assert run["status"] == "SUCCESS", (run, running.log_tail("code"), running.log_tail("daemon"))
                models = client.get("/models", headers=AUTH).json()["versions"]
                assert [m["cutoff"] for m in models] == ["2012-12-31"]
                assert models[0]["mlflow_run"].startswith(running.urls["mlflow"])  # registered on the MLflow server

                _backfill(web, ["predictions"], ["2013|AAPL", "2013|MSFT"])
                stored = client.post("/predict", json={"symbols": ["AAPL", "MSFT"], "horizons": [1, 5]}, headers=AUTH).json()
                assert stored["model_version"] == models[0]["version"] and len(stored["predictions"]) == 4

            # The MLflow server's store is Postgres-backed: the version is there, not in a local SQLite file.
            assert not (ibf_home / "mlflow.db").exists()

            # The daemon dies (kill -9) while a backfill is being launched, and comes back: the backfill runs to the end.
            backfill_id = backfills.launch(web, ["market_bars", "features"], ["2013|AAPL", "2013|MSFT"])
            time.sleep(3)
            daemon = next(s for s in running.services if s.name == "daemon")
            os.killpg(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait()
            log = open(daemon.log, "ab")
            daemon.proc = subprocess.Popen(daemon.argv, env=running.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            _finished(web, backfill_id)

            # Postgres restarts under the running webserver and daemon: they reconnect, and a new backfill runs.
            running.postgres.stop()
            running.postgres.start()
            deadline = time.monotonic() + 60
            while True:
                try:
                    backfill_id = backfills.launch(web, ["market_bars"], ["2013|AAPL"])
                    break
                except Exception:  # noqa: BLE001 - the webserver's first query after the restart may fail
                    assert time.monotonic() < deadline, running.log_tail("webserver")
                    time.sleep(2)
            _finished(web, backfill_id)

            # A run worker killed (kill -9) mid-step: its run is marked failed (never stuck), the warehouse is as
            # it was, and relaunching the same partitions succeeds.
            from ibf_core.storage.backends import open_warehouse

            store = open_warehouse(running.settings)
            query = "SELECT symbol, date, logret_1 FROM features ORDER BY symbol, date"
            before = store.query(query)
            rectangle = [f"{year}|{symbol}" for year in ("2011", "2012", "2013") for symbol in ("AAPL", "MSFT")]
            backfill_id = backfills.launch(web, ["features"], rectangle)
            _kill_run_worker_mid_step(web, backfill_id, time.monotonic() + 180)
            found = backfills.wait(web, backfill_id, timeout_s=420)
            statuses = {r["status"] for r in found["runs"]}
            assert "FAILURE" in statuses and statuses <= {"SUCCESS", "FAILURE"}, found
            assert store.query(query).equals(before)
            _backfill(web, ["features"], rectangle)
            assert store.query(query).equals(before)  # idempotent: the same inputs give the same rows
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    assert not any(s.proc.poll() is None for s in running.services)  # all stopped
