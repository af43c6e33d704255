"""Backfills launched as the Dagster UI's partition dialog launches them: the webserver's GraphQL
``launchPartitionBackfill``, executed by the daemon. For the topology test, the benchmark and scripts."""

from __future__ import annotations

import time

# Heavy imports (httpx) stay inside the functions that need them: importing this module loads none of them.

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs: runs(limit: 1000) { runId status } }
    ... on PythonError { message }
  }
}"""
FAILURES = """
query Logs($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events { __typename ... on ExecutionStepFailureEvent { error { message } }
                                                   ... on RunFailureEvent { message } } }
  }
}"""


class BackfillError(RuntimeError):
    """The webserver refused the backfill, or it did not finish in time."""


def graphql(web: str, query: str, variables: dict, timeout_s: float = 60) -> dict:
    import httpx

    answer = httpx.post(f"{web}/graphql", json={"query": query, "variables": variables}, timeout=timeout_s)
    answer.raise_for_status()
    body = answer.json()
    if "errors" in body:
        raise BackfillError(str(body["errors"])[:2000])
    return body["data"]


def launch(web: str, assets: list[str], keys: list[str]) -> str:
    """Launch a backfill of ``assets`` x partition ``keys``; its id."""
    params = {"assetSelection": [{"path": [a]} for a in assets], "partitionNames": keys, "fromFailure": False}
    launched = graphql(web, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"{launched['__typename']}: {launched.get('message', '')}")
    return launched["backfillId"]


def wait(web: str, backfill_id: str, timeout_s: float = 420, poll_s: float = 2) -> dict:
    """The backfill once the daemon has finished it: ``{"status", "runs": [{"runId", "status"}]}``."""
    deadline = time.monotonic() + timeout_s
    while (found := graphql(web, STATUS, {"id": backfill_id})["partitionBackfillOrError"])["status"] == "REQUESTED":
        if time.monotonic() > deadline:
            raise BackfillError(f"backfill {backfill_id} not finished after {timeout_s:.0f} s: {found}")
        time.sleep(poll_s)
    return found


def failures(web: str, run_id: str) -> list[str]:
    """The step and run failure messages of a run."""
    events = graphql(web, FAILURES, {"id": run_id})["logsForRun"].get("events", [])
    return [e.get("error", {}).get("message") or e.get("message") for e in events
            if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")]
