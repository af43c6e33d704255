"""Snapshot of the asset graph: keys, partitions, checks, pools, policies. Regenerate with UPDATE_SNAPSHOTS=1."""

import json
import os

import dagster as dg
import pytest

from helpers.paths import TESTS
from ibf_core.settings import load_settings
from ibf_dagster.definitions import build_definitions

SNAPSHOT = TESTS / "snapshots" / "asset_graph.json"


def describe_partitions(part) -> object:
    if part is None:
        return None
    if isinstance(part, dg.MultiPartitionsDefinition):
        return {d.name: describe_partitions(d.partitions_def) for d in part.partitions_defs}
    if isinstance(part, dg.DynamicPartitionsDefinition):
        return f"dynamic:{part.name}"
    if isinstance(part, dg.TimeWindowPartitionsDefinition):
        return {"cron": part.cron_schedule, "timezone": part.timezone, "end_offset": part.end_offset}
    return type(part).__name__


def graph_snapshot() -> dict:
    defs = build_definitions(load_settings())
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": describe_partitions(node.partitions_def),
            "backfill_policy": str(node.backfill_policy.policy_type) if node.backfill_policy else None,
            "pools": sorted(node.pools or []),
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "checks": sorted(k.name for k in node.check_keys),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "has_column_schema": "dagster/column_schema" in node.metadata,
            "has_description": bool(node.description),
        }
    return {
        "assets": assets,
        "checks": sorted(k.to_user_string() for k in graph.asset_check_keys),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "resources": sorted((defs.resources or {}).keys()),
    }


def test_asset_graph_matches_snapshot():
    current = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        # Never compare a snapshot with itself: rewriting it is a failed run that asks for a review.
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        pytest.fail("snapshot rewritten from the current graph: review `git diff tests/snapshots`, then rerun without UPDATE_SNAPSHOTS")
    assert SNAPSHOT.exists(), "no snapshot: run with UPDATE_SNAPSHOTS=1 and review the file"
    assert current == json.loads(SNAPSHOT.read_text()), "asset graph changed: review, then UPDATE_SNAPSHOTS=1"


def test_every_asset_is_documented_and_checked():
    for name, asset in graph_snapshot()["assets"].items():
        assert asset["has_description"] and asset["has_column_schema"] and asset["owners"], name
        assert asset["checks"], f"{name} has no checks"
        if name == "trained_models":
            assert "gpu" in asset["pools"]  # one training at a time per accelerator
        elif asset["partitions"]:
            assert asset["backfill_policy"] == "BackfillPolicyType.SINGLE_RUN", name
            assert "duckdb" in asset["pools"], name


def test_definitions_load_from_workspace_module():
    import ibf_dagster.definitions as module

    assert isinstance(module.defs, dg.Definitions)
