"""The drift-triggered retrain at a universe's size (printed, not asserted): drift found, sensor fires, retrain runs.

A generated vendor-like year (``make_messy_file.py --regime-from``: volatility x3 and a negative drift from the
first session of the year's second-last month) goes through the ``ibf`` CLI, each step its own process:

1. ``ibf backfill --csv FILE --assets market_bars,features`` (the whole year);
2. ``ibf train --cutoff C`` (C: the last session of the fifth-last month; the default members);
3. ``ibf backfill --start .. --end .. --assets predictions,drift_scores`` for the two months before the change and
   the month after it: drift_scores' ``retrain_rule`` check should pass before and fail (ERROR) after;
4. the ``retrain_on_drift`` sensor evaluated on the real instance as the daemon does, and the run it requests
   executed as the daemon's run worker would (its partition added, its tags, ``trained_models`` only).

Each row: wall seconds and the peak RSS of the step's process tree (``wait4``).

    .venv/bin/python benchmarks/bench_drift_retrain.py --symbols 500 [--members gbdt,gbdt_rank] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import KEY  # noqa: E402
from benchmarks.bench_universe import IBF, measured, print_rows  # noqa: E402
from benchmarks.make_messy_file import session_days  # noqa: E402

# The daemon's part, in a child process so its time and memory are measured like the CLI steps.
SENSOR_AND_RETRAIN = """
import json, os, pathlib, sys
import dagster as dg
from ibf_core.settings import get_settings
from ibf_dagster.definitions import build_definitions
from ibf_dagster.instance import get_instance

settings = get_settings()
defs = build_definitions(settings)
instance = get_instance(settings)
resources = {k: v for k, v in defs.resources.items() if k in ("ibf", "warehouse")}
context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
result = defs.get_sensor_def("retrain_on_drift")(context)
if not result.run_requests:
    raise SystemExit(f"the sensor requested no retrain: {result.skip_reason}")
request = result.run_requests[0]
instance.add_dynamic_partitions("model_cutoff", [request.partition_key])
job = defs.resolve_implicit_global_asset_job_def()
run = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("trained_models")],
                             partition_key=request.partition_key, tags=request.tags, raise_on_error=False)
meta = run.asset_materializations_for_node("trained_models")[0].metadata if run.success else {}
facts = {"success": run.success, "episode": request.tags.get("ibf/drift_episode"), "run_key": request.run_key,
         "cutoff": request.partition_key, "model_version": getattr(meta.get("model_version"), "value", None),
         "device": getattr(meta.get("device"), "value", None)}
pathlib.Path(os.environ["BENCH_OUT"]).write_text(json.dumps(facts))
sys.exit(0 if run.success else 1)
"""


def month_end(days: list[str], month: str) -> str:
    return [d for d in days if d[:7] == month][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--members", default=None, help="IBF_MODEL_MEMBERS (default: the settings' default)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ibf-bench-drift-"))
    work.mkdir(parents=True, exist_ok=True)
    home, csv = work / "ibf_home", work / "bars.csv"
    rows: list[tuple] = []
    try:
        # The sessions the file will hold (less the vendor gaps it removes): the regime change and cut-off sit on them.
        days = [str(d.date()) for d in session_days(252, "2021-12-31")]
        months = sorted({d[:7] for d in days})
        changed = months[-2]  # the regime changes on the first session of the second-last month
        regime_from = [d for d in days if d[:7] == changed][0]
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_messy_file.py"), "--symbols", str(args.symbols),
                        "--sessions", "252", "--end", "2021-12-31", "--regime-from", regime_from, "--out", str(csv),
                        "--manifest", str(work / "manifest.json")], check=True, stdout=subprocess.DEVNULL)
        cutoff = month_end(days, months[-5])
        env = {k: v for k, v in os.environ.items() if not k.startswith("IBF_")}
        env.update(IBF_HOME=str(home), IBF_CONFIG=str(work / "none.toml"), IBF_HISTORY_START=days[0],
                   IBF_DATE_PARTITIONS="month", IBF_ACCELERATOR=os.environ.get("IBF_ACCELERATOR", "cpu"),
                   IBF_SOURCE="csv", IBF_CSV_PATH=str(csv), IBF_API_KEYS=hashlib.sha256(KEY.encode()).hexdigest())
        if args.members:
            env["IBF_MODEL_MEMBERS"] = args.members
        print(f"{args.symbols} symbols x {len(days)} sessions ({days[0]}..{days[-1]}); regime change from {regime_from}; "
              f"model cut-off {cutoff}; work folder {work}", flush=True)
        measured([IBF, "backfill", "--csv", str(csv), "--assets", "market_bars,features"], env, "load (market_bars, features)", rows)
        env["IBF_UNIVERSE"] = ",".join(sorted({line.split(",")[1] for line in csv.read_text().splitlines()[1:]}))
        measured([IBF, "train", "--cutoff", cutoff], env, f"ibf train --cutoff {cutoff}", rows)
        first = [d for d in days if d[:7] == months[-4]][0]
        measured([IBF, "backfill", "--start", first, "--end", month_end(days, changed), "--assets", "predictions,drift_scores"],
                 env, f"predictions, drift_scores {first}..{month_end(days, changed)}", rows)
        env_child = env | {"PYTHONPATH": str(ROOT), "BENCH_OUT": str(work / "retrain.json")}
        measured([sys.executable, "-c", SENSOR_AND_RETRAIN], env_child, "retrain_on_drift sensor + the retrain run it requests", rows)
        request = json.loads((work / "retrain.json").read_text())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print_rows(f"step ({args.symbols} symbols x 1 year, drift retrain)", rows)
    print(f"\nthe retrain: {request}")


if __name__ == "__main__":
    main()
