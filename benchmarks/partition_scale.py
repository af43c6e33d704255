"""How Dagster copes with the partition counts of ``market_bars`` (NYSE trading date x symbol).

Measures, for each (symbols x years, date granularity) configuration and with a fresh temporary
DAGSTER_HOME (SQLite instance) each:

1. definitions load, ``instance.add_dynamic_partitions`` and ``get_partition_keys`` on the
   ``MultiPartitionsDefinition`` (the full date x symbol cross product), with the worker's peak RSS;
2. the GraphQL the asset page issues (the exact ``AssetGraphLiveQuery`` -> ``partitionStats`` and
   ``PartitionHealthQuery`` -> ``partitionKeysByDimension`` + ``assetPartitionStatuses`` texts from the
   dagster-webserver 1.13 bundle), run through the real GraphQL schema against a real gRPC code server
   (``dagster_graphql.test.utils.define_out_of_process_context``), cold (status cache empty) and warm,
   after recording runless materializations (all dates for a few symbols + all symbols for the
   latest few dates);
3. the daemon side: ``evaluate_automation_conditions`` with ``AutomationCondition.eager()`` (two ticks)
   and ``on_cron``; creating a backfill of every partition through the ``launchPartitionBackfill``
   mutation (``allPartitions: true`` and, as the launch dialog does, an explicit ``partitionNames``
   list); and the backfill daemon's first iteration (``dagster._daemon.backfill.execute_backfill_iteration``,
   internal) with a QueuedRunCoordinator so no run actually executes.

Every phase runs in its own subprocess (own process group, killed as a group). Phases run in rounds
across the configurations (enumerate/record/ui/automation for all, then the backfill phases), smallest
partition count first, so a blow-up at the top end cannot starve the rest. Each measurement has a time
cap (``--timeout``; the backfill daemon ticks ``--backfill-timeout``, since on SQLite they are linear in
partitions and their progress is probed from the database when cut off) and the whole script a global
budget (``--budget``); a measurement that hits either is reported as "DNF" with the stack it was in,
and the rest of its phase is skipped. A phase whose processes exceed ``--max-rss-gb`` is killed too.

Usage::

    python benchmarks/partition_scale.py --sizes 100x5,500x10 --granularities day,week,month \
        --timeout 180 --json /tmp/partition_scale.json            # ~14 min on 2 cores
    # one configuration, some phases, longer caps:
    python benchmarks/partition_scale.py --sizes 500x10 --granularities day \
        --phases enumerate,automation,backfill_subset --timeout 240 --backfill-timeout 240

The module is also the code location the workers load (``build_defs`` reads ``IBF_PSCALE_*`` from the
environment); a one-line defs file is generated in each temporary DAGSTER_HOME.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ASSET_NAME = "market_bars"
DYNAMIC_NAME = "symbol"
GRANULARITIES = ("day", "week", "month")
# rough partitions per year, only used to order configurations (smallest first)
_PER_YEAR = {"day": 252, "week": 52, "month": 12}

# ---------------------------------------------------------------------------------------------
# Definitions under test (imported by the worker and by the gRPC code server)
# ---------------------------------------------------------------------------------------------


def date_start(years: int, as_of: dt.date) -> dt.date:
    """First day of ``as_of``'s month, ``years`` years back: the first date partition."""
    return dt.date(as_of.year - years, as_of.month, 1)


def nyse_holidays(start: dt.date, end: dt.date) -> list[dt.datetime]:
    """Weekdays in [start, end] on which NYSE (exchange_calendars XNYS) has no session."""
    import exchange_calendars as xcals
    import pandas as pd

    cal = xcals.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
    sessions = pd.DatetimeIndex(cal.sessions).tz_localize(None)
    weekdays = pd.bdate_range(start, end)
    return [d.to_pydatetime() for d in weekdays.difference(sessions)]


def build_date_partitions(granularity: str, start: dt.date):
    import dagster as dg

    start_dt = dt.datetime.combine(start, dt.time())
    if granularity == "day":
        # calendar of exchange_calendars: it ships sessions up to ~1 year ahead
        end = dt.date.today() + dt.timedelta(days=360)
        return dg.TimeWindowPartitionsDefinition(
            cron_schedule="0 0 * * 1-5",
            start=start_dt,
            fmt="%Y-%m-%d",
            exclusions=nyse_holidays(start, end),
        )
    if granularity == "week":
        return dg.WeeklyPartitionsDefinition(start_date=start_dt, day_offset=1)  # weeks start Monday
    if granularity == "month":
        return dg.MonthlyPartitionsDefinition(start_date=start_dt)
    raise ValueError(f"unknown granularity {granularity!r}")


def build_partitions_def(granularity: str, start: dt.date):
    import dagster as dg

    return dg.MultiPartitionsDefinition(
        {
            "date": build_date_partitions(granularity, start),
            "symbol": dg.DynamicPartitionsDefinition(name=DYNAMIC_NAME),
        }
    )


def build_defs(granularity: str | None = None, start: dt.date | None = None, condition: str | None = None):
    """``Definitions`` with one ``market_bars`` asset shaped like the real one."""
    import dagster as dg

    granularity = granularity or os.environ["IBF_PSCALE_GRAN"]
    start = start or dt.date.fromisoformat(os.environ["IBF_PSCALE_START"])
    condition = condition or os.environ.get("IBF_PSCALE_CONDITION", "eager")
    automation = {
        "eager": dg.AutomationCondition.eager(),
        "on_cron": dg.AutomationCondition.on_cron("0 23 * * 1-5"),
    }[condition]

    @dg.asset(
        name=ASSET_NAME,
        partitions_def=build_partitions_def(granularity, start),
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=automation,
    )
    def market_bars(context):  # never executed here (no string annotation: decorator resolves hints)
        context.log.info(str(context.partition_key_range))

    return dg.Definitions(assets=[market_bars])


# ---------------------------------------------------------------------------------------------
# GraphQL the asset page sends (copied from dagster-webserver 1.13.27's ui-core sources)
# ---------------------------------------------------------------------------------------------

ASSET_GRAPH_LIVE_QUERY = """
query AssetGraphLiveQuery($assetKeys: [AssetKeyInput!]!) {
  assetNodes(assetKeys: $assetKeys, loadMaterializations: true) {
    id
    opNames
    repository { id }
    assetKey { path }
    assetMaterializations(limit: 1) { timestamp runId stepKey }
    assetObservations(limit: 1) { timestamp runId stepKey }
    partitionStats { numMaterialized numMaterializing numPartitions numFailed }
  }
  assetsLatestInfo(assetKeys: $assetKeys) {
    id
    assetKey { path }
    unstartedRunIds
    inProgressRunIds
    latestRun { id status startTime endTime }
  }
}
"""

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""


# ---------------------------------------------------------------------------------------------
# Phases and their measurements (worker side)
# ---------------------------------------------------------------------------------------------

PHASES: dict[str, list[str]] = {
    "enumerate": ["defs_load", "add_dynamic_partitions", "enumerate_keys"],
    "record": ["record_materializations"],
    "ui": [
        "workspace_load",
        "gql_live_cold",
        "gql_health_cold",
        "gql_live_warm",
        "gql_health_warm",
    ],
    "automation": ["eager_tick1", "eager_tick2", "on_cron_tick1"],
    "backfill": [
        "workspace_load_backfill",
        "backfill_launch_all",
        "backfill_launch_keys",
        "backfill_daemon_iter1",
    ],
    # same, with DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1: one "materialization planned"
    # event per run instead of one per partition
    "backfill_subset": [
        "workspace_load_subset",
        "subset_launch_all",
        "subset_daemon_iter1",
    ],
}
PHASE_ENV = {"backfill_subset": {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1"}}
# the backfill daemon's first tick is linear in partitions on SQLite (see the docs); own, shorter cap
DAEMON_ITERS = {"backfill_daemon_iter1": "backfill_launch_all", "subset_daemon_iter1": "subset_launch_all"}


def symbols(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def _maxrss_mb() -> float:
    # ru_maxrss is KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Progress:
    """Append-only JSON lines the parent tails to know what is running and what finished."""

    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1)

    def write(self, **rec) -> None:
        self._f.write(json.dumps(rec, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    @contextmanager
    def measure(self, name: str, extra: dict):
        self.write(m=name, ev="start", t=time.time())
        t0 = time.perf_counter()
        yield extra
        secs = time.perf_counter() - t0
        self.write(m=name, ev="end", t=time.time(), seconds=round(secs, 3), worker_maxrss_mb=_maxrss_mb(), **extra)


def _summarise_health(data: dict) -> dict:
    node = data["assetNodeOrError"]
    dims = {d["name"]: len(d["partitionKeys"]) for d in node["partitionKeysByDimension"]}
    st = node["assetPartitionStatuses"] or {}
    out: dict = {"dim_key_counts": dims}
    if "ranges" in st and "primaryDimensionName" in st:
        ranges = st["ranges"]
        out["status_ranges"] = len(ranges)
        out["materialized_secondary_keys_listed"] = sum(
            len((r["secondaryDim"] or {}).get("materializedPartitions") or []) for r in ranges
        )
    return out


def worker(args: argparse.Namespace) -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for a stack before a kill
    prog = Progress(args.progress)
    todo = args.only.split(",") if args.only else PHASES[args.worker]
    n_symbols, years = (int(x) for x in args.size.split("x"))
    start = dt.date.fromisoformat(os.environ["IBF_PSCALE_START"])
    prog.write(m="_imports", ev="start", t=time.time())
    t0 = time.perf_counter()
    import dagster as dg
    from dagster._core.definitions.partitions.context import partition_loading_context

    prog.write(m="_imports", ev="end", t=time.time(), seconds=round(time.perf_counter() - t0, 3))

    instance = dg.DagsterInstance.get()  # DAGSTER_HOME set by the parent
    asset_key = dg.AssetKey(ASSET_NAME)

    if args.worker == "enumerate":
        if "defs_load" in todo:
            with prog.measure("defs_load", {}) as ex:
                defs = build_defs(args.gran, start)
                graph = defs.resolve_asset_graph()
                pdef = graph.get(asset_key).partitions_def
                ex["date_keys"] = len(pdef.partitions_defs[0].partitions_def.get_partition_keys())
        if "add_dynamic_partitions" in todo:
            with prog.measure("add_dynamic_partitions", {"symbols": n_symbols}):
                instance.add_dynamic_partitions(DYNAMIC_NAME, symbols(n_symbols))
        if "enumerate_keys" in todo:
            with prog.measure("enumerate_keys", {}) as ex:
                keys = pdef.get_partition_keys(dynamic_partitions_store=instance)
                ex["partitions"] = len(keys)
                ex["first"], ex["last"] = str(keys[0]), str(keys[-1])
            with prog.measure("num_partitions", {}) as ex:
                with partition_loading_context(dynamic_partitions_store=instance):
                    ex["partitions"] = pdef.get_num_partitions()
        return

    if args.worker == "record":
        defs = build_defs(args.gran, start)
        pdef = defs.resolve_asset_graph().get(asset_key).partitions_def
        date_keys = pdef.partitions_defs[0].partitions_def.get_partition_keys()
        syms = symbols(n_symbols)
        wanted = {(d, s) for s in syms[: args.record_symbols] for d in date_keys}
        wanted |= {(d, s) for d in date_keys[-args.record_latest_dates :] for s in syms}
        ordered = sorted(wanted)
        with prog.measure("record_materializations", {}) as ex:
            chunk = 1000  # SQLite's store_event_batch is a loop of store_event; chunk for progress
            for i in range(0, len(ordered), chunk):
                for d, s in ordered[i : i + chunk]:
                    instance.report_runless_asset_event(
                        dg.AssetMaterialization(
                            asset_key, partition=dg.MultiPartitionKey({"date": d, "symbol": s})
                        )
                    )
                prog.write(m="record_materializations", ev="progress", done=i + chunk)
            ex["events"] = len(ordered)
            ex["rule"] = (
                f"all {len(date_keys)} dates for {args.record_symbols} symbols"
                f" + all {n_symbols} symbols for the latest {args.record_latest_dates} dates"
            )
        return

    if args.worker == "automation":
        cursor_eager = None  # tick 2 continues from tick 1's cursor, as the daemon does
        for name in ("eager_tick1", "eager_tick2", "on_cron_tick1"):
            if name not in todo:
                continue
            cond = "on_cron" if name.startswith("on_cron") else "eager"
            defs = build_defs(args.gran, start, cond)
            cursor = cursor_eager if name == "eager_tick2" else None
            with prog.measure(name, {}) as ex:
                res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
                ex["requested"] = res.total_requested
            if name == "eager_tick1":
                cursor_eager = res.cursor
        return

    # ui / backfill: the real GraphQL schema against a gRPC code server, as dagster-webserver runs it
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    defs_file = str(Path(os.environ["DAGSTER_HOME"]) / "pscale_defs.py")
    load_name = PHASES[args.worker][0]
    prog.write(m=load_name, ev="start", t=time.time())
    t0 = time.perf_counter()
    with define_out_of_process_context(defs_file, "defs", instance) as ctx:
        # force the location to load (the code server returns the repository snapshot)
        n_nodes = len(list(ctx.asset_graph.asset_nodes))
        if n_nodes == 0:
            errors = [str(e.load_error) for e in ctx.get_code_location_entries().values() if e.load_error]
            raise RuntimeError(f"code location did not load: {errors}")
        prog.write(
            m=load_name,
            ev="end",
            seconds=round(time.perf_counter() - t0, 3),
            worker_maxrss_mb=_maxrss_mb(),
            asset_nodes=n_nodes,
        )

        def gql(query: str, variables: dict) -> tuple[dict, int]:
            res = execute_dagster_graphql(ctx, query, variables)
            data = res.data
            return data, len(json.dumps(data))

        if args.worker == "ui":
            live_vars = {"assetKeys": [{"path": [ASSET_NAME]}]}
            health_vars = {"assetKey": {"path": [ASSET_NAME]}}
            for temp in ("cold", "warm"):
                name = f"gql_live_{temp}"
                if name in todo:
                    with prog.measure(name, {}) as ex:
                        data, size = gql(ASSET_GRAPH_LIVE_QUERY, live_vars)
                        ex["partitionStats"] = data["assetNodes"][0]["partitionStats"]
                        ex["response_bytes"] = size
                name = f"gql_health_{temp}"
                if name in todo:
                    with prog.measure(name, {}) as ex:
                        data, size = gql(PARTITION_HEALTH_QUERY, health_vars)
                        ex.update(_summarise_health(data))
                        ex["response_bytes"] = size
            return

        # backfill phases
        import logging

        from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
        from dagster._daemon.backfill import execute_backfill_iteration
        from dagster._serdes import serialize_value

        from ibf_dagster.stack.backfills import LAUNCH  # the one copy of the partition dialog's mutation

        def launch(params: dict) -> str:
            data, _ = gql(LAUNCH, {"params": params})
            res = data["launchPartitionBackfill"]
            if res["__typename"] != "LaunchBackfillSuccess":
                raise RuntimeError(f"launchPartitionBackfill failed: {res}")
            return res["backfillId"]

        def cancel(backfill_id: str) -> None:
            instance.update_backfill(instance.get_backfill(backfill_id).with_status(BulkActionStatus.CANCELED))

        # a backfill left REQUESTED by an earlier, killed phase would be picked up by the daemon tick
        for old in instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])):
            cancel(old.backfill_id)

        prefix = "backfill" if args.worker == "backfill" else "subset"
        bid = None
        name = f"{prefix}_launch_all"
        if name in todo:
            with prog.measure(name, {}) as ex:
                bid = launch({"assetSelection": [{"path": [ASSET_NAME]}], "allPartitions": True, "tags": []})
                ex["backfill_id"] = bid
            prog.write(m=name, ev="info", stored_backfill_bytes=len(serialize_value(instance.get_backfill(bid))))
        if "backfill_launch_keys" in todo:
            # what the "Materialize" dialog sends for a single asset: every key, listed
            with partition_loading_context(dynamic_partitions_store=instance):
                pdef = ctx.asset_graph.get(asset_key).partitions_def
                keys = [str(k) for k in pdef.get_partition_keys()]
            with prog.measure("backfill_launch_keys", {"partition_names": len(keys)}) as ex:
                kid = launch({"assetSelection": [{"path": [ASSET_NAME]}], "partitionNames": keys, "tags": []})
            prog.write(
                m="backfill_launch_keys", ev="info", stored_backfill_bytes=len(serialize_value(instance.get_backfill(kid)))
            )
            cancel(kid)  # only its creation is measured
        name = f"{prefix}_daemon_iter1"
        if name in todo and bid:
            logger = logging.getLogger("pscale.backfill")
            logger.setLevel(logging.WARNING)
            with prog.measure(name, {}) as ex:
                errors = [e for e in execute_backfill_iteration(ctx.process_context, logger) if e]
                ex["errors"] = [str(e.message)[:300] for e in errors]
                ex["backfill_status"] = str(instance.get_backfill(bid).status)
        return


# ---------------------------------------------------------------------------------------------
# Parent: one temp DAGSTER_HOME per configuration, one subprocess per phase, caps and budget
# ---------------------------------------------------------------------------------------------

DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
"""


def _group_rss_mb(pgid: int) -> float:
    total = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # field 5 (pgrp) overall; index 2 after state/ppid
                continue
            for line in (p / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_phase(phase: str, cfg: dict, home: Path, args: argparse.Namespace, deadline: float) -> dict:
    """Run one phase in its own process group; returns {measurement: result}."""
    names = PHASES[phase]
    results: dict[str, dict] = {}
    if deadline - time.time() < 15:
        for n in names:
            results[n] = {"status": "not_run", "why": "global budget exhausted"}
        return results
    progress = home / f"{phase}.progress.jsonl"
    log = open(home / f"{phase}.log", "w")
    env = dict(os.environ)
    env.update(cfg["env"])
    env.update(PHASE_ENV.get(phase, {}))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        phase,
        "--size",
        cfg["size"],
        "--gran",
        cfg["gran"],
        "--progress",
        str(progress),
        "--record-symbols",
        str(args.record_symbols),
        "--record-latest-dates",
        str(args.record_latest_dates),
    ]
    t_launch = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pgid = proc.pid
    current, current_start = "_startup", time.time()
    offset = 0
    peak = 0.0
    failure = None
    while True:
        rc = proc.poll()
        if progress.exists():
            with open(progress) as f:
                f.seek(offset)
                chunk = f.read()
            # only consume complete lines
            cut = chunk.rfind("\n") + 1
            offset += cut
            for line in chunk[:cut].splitlines():
                rec = json.loads(line)
                if rec["ev"] == "start":
                    current, current_start = rec["m"], rec["t"]
                    results.setdefault(rec["m"], {})["started_at"] = round(rec["t"] - t_launch, 2)
                elif rec["ev"] == "end":
                    r = results.setdefault(rec["m"], {})
                    r.update({k: v for k, v in rec.items() if k not in ("m", "ev")})
                    r["status"] = "ok"
                    current, current_start = "_between", time.time()
                elif rec["ev"] in ("info", "progress"):
                    r = results.setdefault(rec["m"], {})
                    r.update({k: v for k, v in rec.items() if k not in ("m", "ev")})
        if rc is not None:
            break
        now = time.time()
        own_cap = args.backfill_timeout if current in DAEMON_ITERS else args.timeout
        cap = min(own_cap, deadline - current_start)
        rss = _group_rss_mb(pgid)
        peak = max(peak, rss)
        if now - current_start > cap:
            stack = _stack_then_kill(proc, pgid, home / f"{phase}.log")
            why = "global budget exhausted" if cap < own_cap else f"time cap {own_cap:.0f} s"
            failure = (current, {"status": "timeout", "cap_s": round(cap, 1), "why": why, "stack_at_kill": stack})
            break
        if rss > args.max_rss_gb * 1024:
            stack = _stack_then_kill(proc, pgid, home / f"{phase}.log")
            failure = (
                current,
                {"status": "killed_rss", "rss_mb": round(rss), "why": f"> {args.max_rss_gb} GiB", "stack_at_kill": stack},
            )
            break
        time.sleep(0.25)
    _kill_group(pgid)  # a gRPC code server left behind, if any
    log.close()
    if failure:
        name, info = failure
        results.setdefault(name, {}).update(info)
    elif proc.returncode != 0:
        tail = (home / f"{phase}.log").read_text()[-1500:]
        results.setdefault(current, {}).update({"status": "error", "rc": proc.returncode, "log_tail": tail})
        print(f"    phase {phase} failed (rc {proc.returncode}) during {current}:\n{tail[-600:]}", flush=True)
    for n in names:
        if n not in results or "status" not in results[n]:
            results.setdefault(n, {}).update({"status": "skipped", "why": "earlier step of the phase failed"})
    results["_phase"] = {
        "group_peak_rss_mb": round(peak, 1),
        "rc": proc.returncode,
        "wall_s": round(time.time() - t_launch, 1),  # includes interpreter start/exit and untimed setup
    }
    for it, launch in DAEMON_ITERS.items():
        bid = results.get(launch, {}).get("backfill_id")
        if it in results and bid:
            results[it].update(_probe_backfill(home, bid))
    return results


def _stack_then_kill(proc: subprocess.Popen, pgid: int, log_path: Path) -> list[str]:
    """Ask the worker for a faulthandler dump (SIGUSR1), kill the group, return the main thread's frames."""
    try:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1.5)
    except ProcessLookupError:
        pass
    _kill_group(pgid)
    proc.wait()
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    i = text.rfind("Current thread")
    if i < 0:
        return []
    frames = []
    for line in text[i:].splitlines()[1:]:
        line = line.strip()
        if not line.startswith("File "):
            break
        # File "/.../site-packages/dagster/_core/x.py", line 12 in fn  ->  dagster/_core/x.py:12 fn
        try:
            path, rest = line[6:].split('", line ', 1)
            lineno, fn = rest.split(" in ", 1)
        except ValueError:
            continue
        short = path.split("site-packages/")[-1]
        frames.append(f"{short}:{lineno} {fn}")
    return frames[:25]


def _probe_backfill(home: Path, backfill_id: str) -> dict:
    """Runs and 'materialization planned' events the backfill tick wrote (read straight from SQLite)."""
    import sqlite3

    out: dict = {}
    try:
        con = sqlite3.connect(f"file:{home / 'history' / 'runs.db'}?mode=ro", uri=True, timeout=10)
        run_ids = [
            r[0]
            for r in con.execute(
                "select run_id from run_tags where key = 'dagster/backfill' and value = ?", (backfill_id,)
            )
        ]
        out["runs_created"] = len(run_ids)
        if run_ids:
            tags = dict(
                con.execute(
                    "select key, value from run_tags where run_id = ? and key like 'dagster/asset_partition%'",
                    (run_ids[0],),
                ).fetchall()
            )
            out["run0_partition_tags"] = tags
        con.close()
        con = sqlite3.connect(f"file:{home / 'history' / 'runs' / 'index.db'}?mode=ro", uri=True, timeout=10)
        marks = ",".join("?" * len(run_ids))
        out["planned_events"] = (
            con.execute(
                "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION_PLANNED'"
                f" and run_id in ({marks})",
                run_ids,
            ).fetchone()[0]
            if run_ids
            else 0
        )
        con.close()
    except Exception as e:  # noqa: BLE001 - a probe must never break the report
        out["probe_error"] = repr(e)
    return out


# Phases run in rounds across all configurations (the DAGSTER_HOMEs persist in between), so if the
# global budget runs out it is the backfill ticks of the largest configurations that go unmeasured,
# not the UI/automation numbers.
ROUNDS = [["enumerate", "record", "ui", "automation"], ["backfill"], ["backfill_subset"]]


def setup_config(size: str, gran: str, args: argparse.Namespace) -> dict:
    n_symbols, years = (int(x) for x in size.split("x"))
    start = date_start(years, args.as_of)
    home = Path(tempfile.mkdtemp(prefix=f"pscale_{size}_{gran}_"))
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    bench_dir = str(Path(__file__).resolve().parent)
    (home / "pscale_defs.py").write_text(
        f"import sys\nsys.path.insert(0, {bench_dir!r})\n"
        "from partition_scale import build_defs\n\ndefs = build_defs()\n"
    )
    return {
        "size": size,
        "gran": gran,
        "home": home,
        "env": {
            "DAGSTER_HOME": str(home),
            "IBF_PSCALE_GRAN": gran,
            "IBF_PSCALE_START": start.isoformat(),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        },
        "out": {"size": size, "granularity": gran, "symbols": n_symbols, "years": years, "start": start.isoformat()},
    }


def add_rates(out: dict) -> None:
    """For a daemon tick cut off by its cap: work done per second and the implied full-tick time."""
    n_partitions = out.get("enumerate", {}).get("enumerate_keys", {}).get("partitions")
    for phase, it, unit, total in (
        ("backfill", "backfill_daemon_iter1", "planned_events", n_partitions),
        ("backfill_subset", "subset_daemon_iter1", "runs_created", out["symbols"]),
    ):
        r = out.get(phase, {}).get(it)
        if not r or r.get("status") != "timeout" or not r.get(unit):
            continue
        rate = r[unit] / r["cap_s"]
        r["rate_per_s"] = round(rate, 1)
        if total:
            r["est_full_tick_s"] = round(total / rate)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

ROWS = [
    ("partitions", "enumerate", "enumerate_keys", "partitions"),
    ("defs load (s)", "enumerate", "defs_load", "seconds"),
    ("add_dynamic_partitions (s)", "enumerate", "add_dynamic_partitions", "seconds"),
    ("get_partition_keys (s)", "enumerate", "enumerate_keys", "seconds"),
    ("peak RSS after enumeration (MB)", "enumerate", "enumerate_keys", "worker_maxrss_mb"),
    ("materializations recorded", "record", "record_materializations", "events"),
    ("recording them (s)", "record", "record_materializations", "seconds"),
    ("workspace load via gRPC (s)", "ui", "workspace_load", "seconds"),
    ("AssetGraphLiveQuery cold (s)", "ui", "gql_live_cold", "seconds"),
    ("PartitionHealthQuery cold (s)", "ui", "gql_health_cold", "seconds"),
    ("AssetGraphLiveQuery warm (s)", "ui", "gql_live_warm", "seconds"),
    ("PartitionHealthQuery warm (s)", "ui", "gql_health_warm", "seconds"),
    ("PartitionHealth response (KB)", "ui", "gql_health_warm", "response_bytes"),
    ("UI worker peak RSS (MB)", "ui", "gql_health_warm", "worker_maxrss_mb"),
    ("eager tick 1 (s)", "automation", "eager_tick1", "seconds"),
    ("eager tick 1 requested", "automation", "eager_tick1", "requested"),
    ("eager tick 2 (s)", "automation", "eager_tick2", "seconds"),
    ("on_cron tick 1 (s)", "automation", "on_cron_tick1", "seconds"),
    ("automation peak RSS (MB)", "automation", "on_cron_tick1", "worker_maxrss_mb"),
    ("launch backfill allPartitions (s)", "backfill", "backfill_launch_all", "seconds"),
    ("stored backfill, allPartitions (KB)", "backfill", "backfill_launch_all", "stored_backfill_bytes"),
    ("launch backfill partitionNames (s)", "backfill", "backfill_launch_keys", "seconds"),
    ("stored backfill, partitionNames (KB)", "backfill", "backfill_launch_keys", "stored_backfill_bytes"),
    ("daemon 1st tick, default (s)", "backfill", "backfill_daemon_iter1", "seconds"),
    ("  runs created in it", "backfill", "backfill_daemon_iter1", "runs_created"),
    ("  planned events written", "backfill", "backfill_daemon_iter1", "planned_events"),
    ("  est. full tick at that rate (s)", "backfill", "backfill_daemon_iter1", "est_full_tick_s"),
    ("backfill worker peak RSS (MB)", "backfill", "backfill_daemon_iter1", "worker_maxrss_mb"),
    ("daemon 1st tick, subset planned events (s)", "backfill_subset", "subset_daemon_iter1", "seconds"),
    ("  runs created in it", "backfill_subset", "subset_daemon_iter1", "runs_created"),
    ("  planned events written", "backfill_subset", "subset_daemon_iter1", "planned_events"),
    ("  est. full tick at that rate (s)", "backfill_subset", "subset_daemon_iter1", "est_full_tick_s"),
]


def _cell(res: dict, phase: str, meas: str, field: str) -> str:
    if phase not in res:
        return "n/a"  # phase not selected (--phases)
    r = res[phase].get(meas, {})
    st = r.get("status")
    if field == "est_full_tick_s":
        return f"~{r[field]:,}" if r.get(field) is not None else ""
    if field in ("runs_created", "planned_events") and r.get(field) is not None:
        v = f"{r[field]:,}"
        return v + " (at kill)" if st in ("timeout", "killed_rss") else v
    if st == "timeout":
        return f"DNF >{r['cap_s']:.0f}s" + (" (budget)" if "budget" in r.get("why", "") else "")
    if st == "killed_rss":
        return f"killed >{r['rss_mb']}MB"
    if st == "error":
        return "error"
    if st in ("skipped", "not_run"):
        return "-" if st == "skipped" else "not run"
    v = r.get(field)
    if v is None:
        return "?"
    if field.endswith("_bytes"):
        return f"{v / 1024:,.0f}"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_table(results: list[dict]) -> str:
    heads = [f"{r['size']} {r['granularity']}" for r in results]
    lines = ["| measurement | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label, phase, meas, field in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(r, phase, meas, field) for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100x5,500x10", help="SYMBOLSxYEARS, comma separated")
    ap.add_argument("--granularities", default="day,week,month")
    ap.add_argument("--timeout", type=float, default=180.0, help="cap per measurement (s)")
    ap.add_argument("--budget", type=float, default=840.0, help="cap for the whole script (s)")
    ap.add_argument(
        "--backfill-timeout",
        type=float,
        default=30.0,
        help="cap for the backfill daemon's first tick (linear in partitions on SQLite; progress is probed)",
    )
    ap.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a phase whose processes exceed this")
    ap.add_argument("--record-symbols", type=int, default=2, help="symbols materialized for every date")
    ap.add_argument("--record-latest-dates", type=int, default=2, help="latest dates materialized for all symbols")
    ap.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date.today())
    ap.add_argument(
        "--phases",
        help=f"comma separated subset of {','.join(PHASES)} (default: all; 'enumerate' also fills the"
        " dynamic partitions the other phases need)",
    )
    ap.add_argument("--json", dest="json_out", help="write all results here")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary DAGSTER_HOMEs")
    # worker mode (internal)
    ap.add_argument("--worker", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--only", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--gran", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args)
        return 0

    started = time.time()
    deadline = started + args.budget
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    grans = [g.strip() for g in args.granularities.split(",") if g.strip()]
    for g in grans:
        if g not in GRANULARITIES:
            ap.error(f"unknown granularity {g!r}")
    configs = [(s, g) for s in sizes for g in grans]

    def est(c):
        n, y = (int(x) for x in c[0].split("x"))
        return n * y * _PER_YEAR[c[1]]

    configs.sort(key=est)  # smallest first: a blow-up at the top end cannot starve the rest
    import dagster

    meta = {
        "dagster": dagster.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "as_of": args.as_of.isoformat(),
        "timeout_s": args.timeout,
        "budget_s": args.budget,
        "argv": sys.argv,
    }
    print(f"dagster {meta['dagster']}, python {meta['python']}, {meta['machine']}", flush=True)
    phases = [p.strip() for p in args.phases.split(",")] if args.phases else list(PHASES)
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}; choose from {', '.join(PHASES)}")
    cfgs = [setup_config(size, gran, args) for size, gran in configs]
    results = [c["out"] for c in cfgs]
    for rnd in ROUNDS:
        for c in cfgs:
            for phase in rnd:
                if phase not in phases:
                    continue
                print(f"[{time.time() - started:5.0f}s] {c['size']} {c['gran']}: {phase}", flush=True)
                c["out"][phase] = run_phase(phase, c, c["home"], args, deadline)
            add_rates(c["out"])
            if args.json_out:  # write as we go so a killed script still leaves numbers
                Path(args.json_out).write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    for c in cfgs:
        if args.keep_homes:
            c["out"]["dagster_home"] = str(c["home"])
        else:
            shutil.rmtree(c["home"], ignore_errors=True)
    meta["total_s"] = round(time.time() - started, 1)
    table = render_table(results)
    print()
    print(table)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"meta": meta, "results": results, "table": table}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
