"""Dagster metadata helpers shared by every asset family."""

from __future__ import annotations

import dagster as dg

from ibf_core.quality import QualityResult
from ibf_core.storage.tables import TableSpec

OWNERS = ["team:ibf-data"]


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
