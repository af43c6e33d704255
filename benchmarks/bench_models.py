"""Forecasting benchmarks (printed, not asserted).

1. Training time and peak memory per member on N symbols x Y years (default 100 x 5), each member in its own
   process so its peak RSS is its own. Device: IBF_ACCELERATOR (auto = CUDA when present).
2. Batch inference for 500 symbols x 6 horizons from a trained model: ibf's one batched call per member vs the
   simple baseline of one predict call per symbol (the seed design's per-symbol loop) on the same data.

    .venv/bin/python benchmarks/bench_models.py [--symbols 100 --years 5 --infer-symbols 500 --max-steps 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_backfill import generate  # noqa: E402

CUTOFF = dt.date(2012, 11, 30)


def panel_for(n_symbols: int, years: int):
    from ibf_core.features.pipeline import compute_features
    from ibf_core.models import HORIZONS
    from ibf_core.models.dataset import build_panel

    bars = generate(n_symbols, years)
    return build_panel(bars, compute_features(bars, benchmark=None), HORIZONS)


def train_one(member: str, n_symbols: int, years: int, max_steps: int, out: Path) -> None:
    """Child process: train one member, save the bundle, print timings as JSON."""
    from ibf_core.models.bundle import save_bundle
    from ibf_core.models.config import ModelConfig, device_description, resolve_device
    from ibf_core.models.training import train_models

    panel = panel_for(n_symbols, years)
    device = resolve_device(__import__("os").environ.get("IBF_ACCELERATOR", "auto"))
    config = ModelConfig(members=(member,), max_steps=max_steps)
    started = time.perf_counter()
    bundle = train_models(panel, CUTOFF, config, device=device)
    total = time.perf_counter() - started
    save_bundle(bundle, out)
    facts = bundle.facts["members"][member]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"member": member, "fit_s": facts["seconds"], "total_s": total, "steps": facts.get("steps"),
                      "rows": bundle.facts["train_rows"], "peak_mib": peak, "device": device_description(device)}))


def bench_inference(bundle_dirs: dict[str, Path], n_symbols: int, loop_symbols: int) -> None:
    from ibf_core.models.bundle import ModelBundle, load_bundle
    from ibf_core.models.predict import forecast, origin_rows

    panel = panel_for(n_symbols, 2)
    parts = {m: load_bundle(d) for m, d in bundle_dirs.items()}
    first = next(iter(parts.values()))
    # One bundle holding every member (the ensemble weights are equal here: inference cost is what is measured).
    bundle = ModelBundle(**{k: getattr(first, k) for k in ("cutoff", "train_end", "validation_start", "validation_end", "y_sigma", "vol_fallback", "gbdt_features")},
                         config=first.config.replace(members=list(parts)), scaler=next((p.scaler for p in parts.values() if p.scaler), None))
    for member, part in parts.items():
        bundle.members.update(part.members)  # the baselines too (the same in every part)
        bundle.conformal.update(part.conformal)
    bundle.ensemble = {str(h): {"method": "equal", "weights": {m: 1 / len(parts) for m in parts}} for h in bundle.config.horizons}
    origin = panel["date"].max()
    origins = origin_rows(panel, None, [origin])
    forecast(bundle, panel, origins.head(8))  # warm-up (lazy imports, first-call allocations)
    started = time.perf_counter()
    batched = forecast(bundle, panel, origins)
    batched_s = time.perf_counter() - started
    symbols = sorted(origins["symbol"].unique())[:loop_symbols]
    started = time.perf_counter()
    for symbol in symbols:
        forecast(bundle, panel, origins[origins["symbol"] == symbol])
    loop_s = (time.perf_counter() - started) / len(symbols) * len(origins)
    print(f"\ninference, {len(origins)} symbols x {len(bundle.config.horizons)} horizons, members {list(parts)} + ensemble + intervals:")
    print(f"  ibf batched (one call per member): {batched_s:.2f} s  ({len(batched):,} forecasts)")
    print(f"  per-symbol loop baseline:          {loop_s:.2f} s  (measured on {len(symbols)} symbols, scaled to {len(origins)})")
    print(f"  ratio baseline / ibf:              {loop_s / batched_s:.1f}x   (goal: ibf under 5 s on CPU)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--infer-symbols", type=int, default=500)
    parser.add_argument("--loop-symbols", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--members", default="gbdt,lstm,tft")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ibf-bench-models"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train_one(args.child, args.symbols, args.years, args.max_steps, args.work / args.child)
        return
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    print(f"training, {args.symbols} symbols x {args.years} years, cut-off {CUTOFF}, max_steps {args.max_steps}:")
    print(f"  {'member':<7} {'fit s':>8} {'steps':>6} {'rows':>9} {'peak MiB':>9}  device")
    dirs = {}
    for member in args.members.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--child", member, "--symbols", str(args.symbols), "--years", str(args.years),
             "--max-steps", str(args.max_steps), "--work", str(args.work)],
            capture_output=True, text=True, check=False,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode or not lines:
            print(f"  {member}: failed\n{child.stderr[-2000:]}")
            continue
        r = json.loads(lines[-1])
        print(f"  {member:<7} {r['fit_s']:>8.1f} {str(r['steps']):>6} {r['rows']:>9,} {r['peak_mib']:>9.0f}  {r['device']}")
        dirs[member] = args.work / member
    if dirs:
        bench_inference(dirs, args.infer_symbols, args.loop_symbols)


if __name__ == "__main__":
    main()
