"""Dagster metadata helpers shared by every asset family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from ibf_core.market.quality import QualityResult
from ibf_core.storage.tables import TableSpec
from ibf_dagster.compat import last_recorded_partition

OWNERS = ["team:ibf-data"]
# A single-run backfill repeats the run's metadata on every partition's event: keep plots to small runs.
PLOT_MAX_PARTITIONS = 24


def plot_if_small(context: dg.AssetExecutionContext, make_plot: Callable[[], str]) -> dg.MetadataValue:
    """Markdown for an inline plot, or a note when the run has too many partitions to repeat it on each."""
    n = len(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else 1
    if n > PLOT_MAX_PARTITIONS:
        return dg.MetadataValue.md(f"_plot omitted for a {n}-partition run; query the table in DuckDB_")
    return dg.MetadataValue.md(make_plot())


def partition_result(
    context: dg.AssetExecutionContext, metadata: dict, asset_key: dg.AssetKey | None = None, **result: object
) -> dg.MaterializeResult:
    """A partitioned step's result with the run's ``metadata`` recorded once, on the partition event Dagster records
    last (the asset's latest materialization in the UI); every other partition's event names that partition.
    ``asset_key``: which asset of a multi-asset step the result is for.

    Dagster copies a result's metadata onto the event of every partition of the run: a single-run backfill of
    6,000 partitions serialized and stored its ~5 KB of tables and symbol lists 6,000 times, a third of the
    run's bookkeeping."""
    keys = context.partition_keys if context.has_partition_key_range or context.has_partition_key else []
    if len(keys) <= 1:
        return dg.MaterializeResult(metadata=metadata, asset_key=asset_key, **result)

    last = last_recorded_partition(context)
    context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=last)
    return dg.MaterializeResult(
        metadata={"run_partitions": len(keys), "run_metadata_on": dg.MetadataValue.text(str(last))},
        asset_key=asset_key, **result,
    )


def table_asset(
    spec: TableSpec, *, description: str, partitions_def: dg.PartitionsDefinition, group: str, layer: str, domain: str,
    engine: str = "python", metadata: dict | None = None, **asset: Any,
):
    """``@dg.asset`` for an asset that is a warehouse table: named after the table, one run per backfill rectangle,
    written in the ``duckdb`` pool, with ibf's owners, layer/domain tags, kinds and the table's column schema (plus
    ``metadata``); ``asset`` passes the rest (deps, check_specs, automation_condition) to ``dg.asset``."""
    return dg.asset(
        name=spec.name,
        description=description,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
        kinds={"duckdb", "parquet", engine},
        owners=OWNERS,
        tags={"layer": layer, "domain": domain},
        group_name=group,
        metadata={"dagster/column_schema": column_schema(spec), "dagster/table_name": spec.name, **(metadata or {})},
        **asset,
    )


def column_schema(spec: TableSpec) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, c.sql_type, description=c.description) for c in spec.columns]
    )


def check_result(
    result: QualityResult, severity: dg.AssetCheckSeverity, asset_key: dg.AssetKey | None = None
) -> dg.AssetCheckResult:
    """Turn an ibf_core quality rule result into a Dagster check result (of ``asset_key`` in a multi-asset step)."""
    metadata: dict[str, object] = {"summary": result.summary}
    for key, value in result.details.items():
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
    return dg.AssetCheckResult(
        check_name=result.name, passed=result.passed, severity=severity, metadata=metadata, description=result.summary,
        asset_key=asset_key,
    )
