"""Retraining through the Dagster instance: a ``trained_models`` run submitted to the running webserver
(GraphQL ``launchPipelineExecution`` through dagster-graphql's public client), so it is queued, executed by the
daemon and visible in the UI, with the drift sensor's GPU tags."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_serve.errors import ApiError

# Heavy imports (dagster, dagster_graphql, duckdb, numpy, pyarrow) stay inside the functions that need them:
# importing this module loads none of them.

ASSET_JOB = "__ASSET_JOB"  # the implicit asset job every code location has


def resolve_cutoff(services, cutoff: dt.date | None) -> dt.date:
    """The requested cut-off if it is a session with features for every universe symbol; by default the newest
    stored feature session but one (as ``ibf train``). A refusal is a 422 naming the date."""
    store = services.store
    if cutoff is None:
        dates = store.query("SELECT DISTINCT date FROM features ORDER BY date DESC LIMIT 2")
        if len(dates) < 2:
            raise ApiError(404, "cutoff: no features stored: backfill features first")
        return pd.Timestamp(dates["date"].iloc[1]).date()
    if pd.Timestamp(cutoff) not in set(all_sessions()):
        raise ApiError(404, f"cutoff: {cutoff} is not an NYSE session")
    have = store.query("SELECT count(DISTINCT symbol) AS n FROM features WHERE date = ?", [cutoff])["n"].iloc[0]
    if not have:
        raise ApiError(404, f"cutoff: {cutoff} has no stored features")
    return cutoff


def submit_retrain(services, cutoff: dt.date | None) -> str:
    """Add the cut-off partition and submit the run; the run id. 503 when the webserver cannot be reached."""
    # Dagster (dagster-graphql and the ibf_dagster modules import it) is loaded by a retrain only, not with the service.
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    from ibf_dagster.partitions import MODEL_CUTOFFS
    from ibf_dagster.sensors import gpu_run_tags

    day = resolve_cutoff(services, cutoff)
    instance = services.instance()
    if not instance.has_dynamic_partition(MODEL_CUTOFFS.name, day.isoformat()):
        instance.add_dynamic_partitions(MODEL_CUTOFFS.name, [day.isoformat()])
    url = urlsplit(services.settings.dagster_url)
    client = DagsterGraphQLClient(url.hostname or "127.0.0.1", port_number=url.port, use_https=url.scheme == "https", timeout=30)
    tags = {**gpu_run_tags(services.settings), "dagster/partition": day.isoformat(), "ibf/launched_by": "ibf api"}
    try:
        return client.submit_job_execution(ASSET_JOB, tags=tags,
                                           asset_selection=["trained_models"])
    except Exception as exc:  # noqa: BLE001 - connection refused, timeout: the webserver is not up
        if isinstance(exc, DagsterGraphQLClientError) and not unreachable(exc):
            raise ApiError(503, f"the Dagster webserver refused the run ({str(exc).splitlines()[0][:200]})") from None
        raise ApiError(503, f"the Dagster webserver at {services.settings.dagster_url} is not reachable ({type(exc).__name__}); start it with make ui") from None


def unreachable(exc: BaseException) -> bool:
    """Whether a GraphQL client error is a connection that never happened (the client wraps a refused or timed-out
    connection in the same error type as a refused run)."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError)) or "ConnectionFailed" in name or "Timeout" in name or "ConnectError" in name:
            return True
        seen = seen.__cause__ or seen.__context__
    return False

