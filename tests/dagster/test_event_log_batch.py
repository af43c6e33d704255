"""ibf's SQLite event log writes a step's partition materializations as one batch, with the rows Dagster's own writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
from ibf_dagster.compat import BatchedSqliteEventLogStorage

SYMBOLS = [f"S{i:02d}" for i in range(40)]
PARTITIONS = dg.MultiPartitionsDefinition(
    {"date": dg.MonthlyPartitionsDefinition(start_date="2025-01-01"), "symbol": dg.StaticPartitionsDefinition(SYMBOLS)}
)


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def bars(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": len(context.partition_keys)})


def _run_month(instance) -> dg.ExecuteInProcessResult:
    keys = [str(dg.MultiPartitionKey({"date": "2025-03-01", "symbol": s})) for s in SYMBOLS]
    job = dg.Definitions(assets=[bars]).resolve_implicit_global_asset_job_def()
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    return job.execute_in_process(instance=instance, tags=tags)


def _index_rows(home: Path) -> dict[str, list]:
    """What the index shard holds for the asset, without ids and timestamps."""
    with sqlite3.connect(home / "history" / "runs" / "index.db") as db:
        events = db.execute(
            "SELECT dagster_event_type, asset_key, partition, step_key FROM event_logs WHERE asset_key IS NOT NULL"
            " ORDER BY id"
        ).fetchall()
        # A data version is new each run; that each event has one is what must hold.
        tags = db.execute(
            "SELECT key, CASE WHEN key = 'dagster/data_version' THEN length(value) ELSE value END"
            " FROM asset_event_tags ORDER BY event_id, key"
        ).fetchall()
        keys = db.execute("SELECT asset_key FROM asset_keys").fetchall()
    return {"events": events, "tags": tags, "asset_keys": keys}


def _run_rows(home: Path, run_id: str) -> list:
    with sqlite3.connect(home / "history" / "runs" / f"{run_id}.db") as db:
        return db.execute("SELECT dagster_event_type, partition FROM event_logs ORDER BY id").fetchall()


def test_ibf_instance_uses_the_batched_event_log(instance):
    assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage)


def test_a_batch_writes_what_the_stock_storage_writes_in_a_few_transactions(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    outcomes = {}
    for label, storage in (("stock", None), ("batched", "ibf_dagster.compat")):
        home = tmp_path / label
        home.mkdir()
        yaml = "telemetry:\n  enabled: false\n"
        if storage:
            yaml += (f"event_log_storage:\n  module: {storage}\n  class: BatchedSqliteEventLogStorage\n"
                     f"  config:\n    base_dir: {home / 'history' / 'runs'}\n")
            monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
        else:
            monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
        (home / "dagster.yaml").write_text(yaml)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as inst:
            connects = []
            storage_impl = inst.event_log_storage
            original = storage_impl._connect

            def counting(shard=None, _original=original):
                connects.append(shard)
                return _original(shard)

            monkeypatch.setattr(storage_impl, "_connect", counting)
            result = _run_month(inst)
            assert result.success
            materialized = inst.get_materialized_partitions(bars.key)
            latest = inst.get_latest_materialization_event(bars.key)
            one = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=bars.key, asset_partitions=["2025-03-01|S07"]), limit=5
            ).records
            outcomes[label] = {
                "index": _index_rows(home),
                "run": _run_rows(home, result.run_id),
                "materialized": materialized,
                "latest": latest.dagster_event.partition,
                "one": [r.partition_key for r in one],
                "connects": len(connects),
            }
    stock, batched = outcomes["stock"], outcomes["batched"]
    assert len(stock["materialized"]) == len(SYMBOLS)
    for key in ("index", "run", "materialized", "latest", "one"):
        assert batched[key] == stock[key], key
    assert batched["one"] == ["2025-03-01|S07"]
    # The stock storage opens two connections per materialization; the batch opens two for all of them.
    assert stock["connects"] >= 2 * len(SYMBOLS)
    assert batched["connects"] < stock["connects"] - 2 * len(SYMBOLS) + 10

