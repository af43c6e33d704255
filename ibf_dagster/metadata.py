"""Dagster metadata helpers shared by every asset family."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from ibf_core.quality import QualityResult
from ibf_core.storage.tables import TableSpec

OWNERS = ["team:ibf-data"]
# A single-run backfill repeats the run's metadata on every partition's event: keep plots to small runs.
PLOT_MAX_PARTITIONS = 24


def plot_if_small(context: dg.AssetExecutionContext, make_plot: Callable[[], str]) -> dg.MetadataValue:
    """Markdown for an inline plot, or a note when the run has too many partitions to repeat it on each."""
    n = len(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else 1
    if n > PLOT_MAX_PARTITIONS:
        return dg.MetadataValue.md(f"_plot omitted for a {n}-partition run; query the table in DuckDB_")
    return dg.MetadataValue.md(make_plot())


def column_schema(spec: TableSpec) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, c.sql_type, description=c.description) for c in spec.columns]
    )


def check_result(result: QualityResult, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    """Turn an ibf_core quality rule result into a Dagster check result."""
    metadata: dict[str, object] = {"summary": result.summary}
    for key, value in result.details.items():
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
    return dg.AssetCheckResult(
        check_name=result.name, passed=result.passed, severity=severity, metadata=metadata, description=result.summary
    )
