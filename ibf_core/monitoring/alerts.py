"""Alerts for failed asset checks: a row in the ``alerts`` table, a log line, and (optionally) a webhook POST.

The Dagster side (a sensor reading failed check evaluations) builds :class:`Alert` objects and calls
:func:`record_alerts`; this module knows nothing about Dagster.

Layout: ``lake/alerts/<YYYYMMDD>-<digest>.parquet``, one file per :func:`record_alerts` call that records
something, written by one ``TableStore.write`` holding the whole table's lock;
the DuckDB view ``alerts`` reads them all. Recording is idempotent: an alert whose ``alert_id`` (a hash of asset,
check, partition and evaluation id) is already stored is neither logged, posted nor written again.

Webhook: a Slack-compatible JSON body (``text`` + ``blocks``) is POSTed with ``httpx``; connection errors,
timeouts, HTTP 429 and 5xx are retried with exponential backoff (tenacity), other 4xx are not. A failure never
raises: it becomes ``webhook_status = "failed: <reason>"`` on the stored row.

Secrets: the webhook URL usually embeds a token, so it never appears in a log record (httpx's own request line
included), a stored row, an exception message or a status. Values of environment variables whose name contains
KEY, TOKEN, SECRET or PASSWORD are replaced by ``***`` in the body, the log line and the stored row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ibf_core.settings import get_settings, url_secrets
from ibf_core.storage.interface import WHOLE_TABLE, TableStore, Transaction
from ibf_core.storage.tables import Column, TableSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# Heavy imports (httpx, tenacity) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger("ibf.alerts")

SEVERITIES = ("ERROR", "WARN")
REDACTED = "***"
MIN_SECRET_LEN = 4
_MAX_BACKOFF_S = 30.0
# Slack limits: section text <= 3000 characters, a field's text <= 2000, at most 10 fields.
_SECTION_MAX = 2900
_FIELD_MAX = 1900
_TEXT_MAX = 1000

ALERTS = TableSpec(
    name="alerts",
    description="One row per failed asset-check evaluation (ERROR or WARN), with the webhook outcome.",
    key=("alert_id",),
    files="<YYYYMMDD>-<digest>.parquet",
    columns=(
        Column("alert_id", pa.string(), "sha256(asset|check|partition|evaluation_id), first 16 hex digits"),
        Column("raised_at", pa.timestamp("us", tz="UTC"), "When the check failed, UTC"),
        Column("asset", pa.string(), "Asset key (path joined by '/')"),
        Column("check_name", pa.string(), "Asset check name"),
        Column("partition", pa.string(), "Partition key ('' when unpartitioned)"),
        Column("severity", pa.string(), "ERROR or WARN"),
        Column("description", pa.string(), "What failed (secrets replaced by ***)"),
        Column("metadata", pa.string(), "Check metadata as JSON text (secrets replaced by ***)"),
        Column("run_id", pa.string(), "Dagster run that evaluated the check"),
        Column("webhook_status", pa.string(), "sent, not configured, or failed: <reason>"),
    ),
)


# ----- the alert ------------------------------------------------------------------------------------
def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Alert:
    """One failed check evaluation. ``raised_at`` is stored in UTC (a naive value is read as UTC)."""

    asset: str
    check_name: str
    partition: str
    severity: str
    description: str
    metadata: dict[str, Any]
    run_id: str
    evaluation_id: str
    raised_at: dt.datetime = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        severity = str(self.severity).strip().upper()
        if severity not in SEVERITIES:
            raise ValueError(f"alert severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")
        object.__setattr__(self, "severity", severity)
        object.__setattr__(self, "partition", self.partition or "")
        object.__setattr__(self, "metadata", dict(self.metadata or {}))
        raised = self.raised_at
        if not isinstance(raised, dt.datetime):  # e.g. a pandas Timestamp is a datetime; a string is not
            raise TypeError(f"raised_at must be a datetime, got {type(raised).__name__}")
        if hasattr(raised, "to_pydatetime"):  # pandas Timestamp
            raised = raised.to_pydatetime()
        raised = raised.replace(tzinfo=dt.timezone.utc) if raised.tzinfo is None else raised.astimezone(dt.timezone.utc)
        object.__setattr__(self, "raised_at", raised)

    @property
    def alert_id(self) -> str:
        key = "|".join((self.asset, self.check_name, self.partition, self.evaluation_id))
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# ----- secrets --------------------------------------------------------------------------------------
def known_secrets() -> list[str]:
    """Every secret the settings know of (secret settings, the webhook URL and its token-carrying parts, and
    environment variables named like a key, token or password): never shown in alerts or logs."""
    return _usable(get_settings().secret_values())


def _usable(secrets: Iterable[str]) -> list[str]:
    """Distinct secrets of at least MIN_SECRET_LEN characters, longest first (so a longer one is replaced whole)."""
    unique = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LEN}
    return sorted(unique, key=lambda s: (-len(s), s))


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every occurrence of a secret (>= 4 characters) in a string - dict keys included, recursively
    through dicts, lists, tuples and sets - replaced by ``***``. Other values are returned unchanged."""
    usable = _usable(secrets)
    return _redact(value, usable) if usable else value


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(_redact(v, secrets) for v in value)
    return value


class _RedactFilter(logging.Filter):
    """Redacts webhook URLs from httpx's ``HTTP Request: POST <url> ...`` INFO line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _usable(self.secrets)
        if secrets:
            message = record.getMessage()
            clean = _redact(message, secrets)
            if clean != message:
                record.msg, record.args = clean, ()
        return True


_HTTPX_FILTER = _RedactFilter()


def _hide_in_httpx_log(secrets: Iterable[str]) -> None:
    _HTTPX_FILTER.secrets.update(secrets)
    logger = logging.getLogger("httpx")
    if _HTTPX_FILTER not in logger.filters:
        logger.addFilter(_HTTPX_FILTER)


# ----- the message ----------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> str:
    """Slack's required escapes for user text (&, <, >); the rest of mrkdwn is left as is."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _metadata_json(metadata: dict[str, Any], secrets: list[str], indent: int | None = None) -> str:
    return json.dumps(redact(metadata, secrets), default=str, sort_keys=True, ensure_ascii=False, indent=indent)


def alert_line(alert: Alert, secrets: Iterable[str] = ()) -> str:
    """``ALERT <severity> <asset>.<check_name> [<partition>]: <description>`` on one line, redacted."""
    line = f"ALERT {alert.severity} {alert.asset}.{alert.check_name} [{alert.partition}]: {alert.description}"
    return redact(_one_line(line), secrets)


def slack_body(alert: Alert, secrets: Iterable[str] | None = None) -> dict[str, Any]:
    """A Slack-compatible body: ``text`` (one line, the notification fallback) and ``blocks`` (a header section,
    a section with asset/check/partition/severity/run fields, and the metadata as JSON). Only the alert's own
    fields are included; every string is redacted with ``secrets`` (default :func:`known_secrets`)."""
    secrets = _usable(known_secrets() if secrets is None else secrets)
    text = _clip(alert_line(alert, secrets), _TEXT_MAX)
    icon = ":red_circle:" if alert.severity == "ERROR" else ":warning:"
    headline = f"{icon} *{_mrkdwn(alert.severity)}* `{_mrkdwn(alert.asset)}.{_mrkdwn(alert.check_name)}` failed"
    description = _mrkdwn(redact(alert.description, secrets)) or "_no description_"
    fields = [
        ("Asset", alert.asset),
        ("Check", alert.check_name),
        ("Partition", alert.partition or "—"),
        ("Severity", alert.severity),
        ("Run", alert.run_id or "—"),
        ("Raised at", alert.raised_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"{headline}\n{description}", _SECTION_MAX)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _clip(f"*{name}*\n{_mrkdwn(redact(value, secrets))}", _FIELD_MAX)}
                for name, value in fields
            ],
        },
    ]
    if alert.metadata:
        meta = _clip(_metadata_json(alert.metadata, secrets, indent=1), _SECTION_MAX - 20)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Metadata*\n```{_mrkdwn(meta)}```"}})
    return {"text": text, "blocks": blocks}


# ----- the webhook ----------------------------------------------------------------------------------
class _Retryable(Exception):
    """A failure worth another attempt: connection error, timeout, HTTP 429 or 5xx."""


class _Final(Exception):
    """A failure not worth another attempt (HTTP 4xx other than 429, a bad URL)."""


@dataclass(frozen=True)
class _Outcome:
    status: str  # "sent" or "failed: <reason>"
    unreachable: bool = False  # retries were exhausted: the endpoint is down, not this alert rejected


def send_webhook(url: str, alert: Alert, timeout: float = 10.0, attempts: int = 4, wait_s: float = 0.5) -> str:
    """POST :func:`slack_body` as JSON to ``url``; returns ``"sent"`` or ``"failed: <reason>"``, never raises for
    HTTP or transport failures. Connection errors, timeouts, 429 and 5xx are retried up to ``attempts`` tries in
    all, waiting ``wait_s``, 2 x ``wait_s``, ... (at most 30 s) between them. The reason never contains the URL."""
    return _send(url, alert, timeout=timeout, attempts=attempts, wait_s=wait_s).status


def _send(url: str, alert: Alert, *, timeout: float, attempts: int, wait_s: float) -> _Outcome:
    import httpx
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    if attempts < 1 or timeout <= 0 or wait_s < 0:
        raise ValueError("attempts must be >= 1, timeout > 0 and wait_s >= 0")
    hidden = url_secrets(url)
    secrets = _usable([*known_secrets(), *hidden])
    _hide_in_httpx_log(hidden)
    body = slack_body(alert, secrets)
    context = f"alert {alert.alert_id} ({alert.asset}.{alert.check_name})"

    def clean(text: str) -> str:
        return redact(_one_line(text), secrets)

    def attempt(client: httpx.Client) -> None:
        try:
            response = client.post(url, json=body)
        except httpx.UnsupportedProtocol:
            raise _Final("invalid webhook URL (use http:// or https://)") from None
        except httpx.TimeoutException as exc:
            raise _Retryable(f"no answer within {timeout:g}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(clean(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)) from None
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise _Final(clean(f"invalid webhook URL ({type(exc).__name__})")) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = clean(f"HTTP {status} {response.reason_phrase}".strip())
        if status == 429 or status >= 500:
            raise _Retryable(reason)
        raise _Final(reason)

    retrying = Retrying(
        retry=retry_if_exception_type(_Retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=wait_s, max=_MAX_BACKOFF_S),
        before_sleep=lambda state: log.warning(
            "webhook for %s: attempt %d failed (%s); retrying", context, state.attempt_number, state.outcome.exception()
        ),
        reraise=True,
    )
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), headers={"User-Agent": "ibf"}) as client:
            for try_ in retrying:
                with try_:
                    attempt(client)
    except _Retryable as exc:
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        return _Outcome(f"failed: {exc} (after {tries})", unreachable=True)
    except _Final as exc:
        return _Outcome(f"failed: {exc}")
    except Exception as exc:  # anything else httpx may raise must not break the caller, nor leak the URL
        return _Outcome(f"failed: {clean(type(exc).__name__ + ': ' + str(exc))}")
    return _Outcome("sent")


# ----- the table ------------------------------------------------------------------------------------
def ensure_alerts_table(warehouse: TableStore) -> None:
    """The table and its DuckDB view ``alerts``."""
    warehouse.ensure_table(ALERTS)


def _row(alert: Alert, webhook_status: str, secrets: list[str]) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "raised_at": alert.raised_at,
        "asset": redact(alert.asset, secrets),
        "check_name": redact(alert.check_name, secrets),
        "partition": redact(alert.partition, secrets),
        "severity": alert.severity,
        "description": redact(alert.description, secrets),
        "metadata": _metadata_json(alert.metadata, secrets),
        "run_id": redact(alert.run_id, secrets),
        "webhook_status": redact(webhook_status, secrets),
    }


def record_alerts(
    warehouse: TableStore,
    alerts: list[Alert],
    webhook_url: str | None,
    log: Callable[[str], None] | None = None,
    *,
    timeout: float = 10.0,
    attempts: int = 4,
    wait_s: float = 0.5,
) -> list[dict[str, Any]]:
    """Log, post (when ``webhook_url`` is set) and store every alert not stored yet; returns the rows written.

    Idempotent: alerts whose ``alert_id`` is already in the table (or repeated within ``alerts``) are skipped -
    no log line, no POST, no row. The table lock is held from the check to the write, so two concurrent callers
    never post or store the same alert twice. When the webhook stays unreachable after its retries (connection
    errors, timeouts, 429/5xx), the remaining alerts of the call are not posted (``failed: not sent, the webhook
    was unreachable for an earlier alert``) so a dead endpoint costs one retry cycle, not one per alert.
    ``timeout``, ``attempts`` and ``wait_s`` are passed to the webhook POST (see :func:`send_webhook`).
    """
    emit = log if log is not None else logging.getLogger("ibf.alerts").warning
    url = (webhook_url or "").strip() or None
    secrets = _usable([*known_secrets(), *url_secrets(url or "")])
    ensure_alerts_table(warehouse)
    if not alerts:
        return []
    sent: dict[str, str] = {}  # alert_id -> webhook status: a write that runs build again never posts twice
    unreachable = [False]

    def build(tx: Transaction) -> list[dict[str, Any]]:
        seen: set[str] = set()
        for name in warehouse.partitions(ALERTS):
            stored = tx.read(ALERTS, name, ["alert_id"])
            seen.update(stored.column("alert_id").to_pylist() if stored is not None else [])
        fresh: list[Alert] = []
        for alert in alerts:
            if alert.alert_id not in seen:
                seen.add(alert.alert_id)
                fresh.append(alert)
        rows: list[dict[str, Any]] = []
        for alert in fresh:
            if alert.alert_id not in sent:
                emit(alert_line(alert, secrets))
                if url is None:
                    status = "not configured"
                elif unreachable[0]:
                    status = "failed: not sent, the webhook was unreachable for an earlier alert"
                else:
                    outcome = _send(url, alert, timeout=timeout, attempts=attempts, wait_s=wait_s)
                    status, unreachable[0] = outcome.status, outcome.unreachable
                sent[alert.alert_id] = status
            rows.append(_row(alert, sent[alert.alert_id], secrets))
        if not rows:
            return []
        rows.sort(key=lambda r: (r["raised_at"], r["alert_id"]))
        digest = hashlib.sha256("|".join(sorted(r["alert_id"] for r in rows)).encode()).hexdigest()[:16]
        tx.put(ALERTS, f"{min(r['raised_at'] for r in rows):%Y%m%d}-{digest}", pa.Table.from_pylist(rows, schema=ALERTS.schema))
        return rows

    # The whole table: the check for stored ids and the write are one, so two callers never post or store twice.
    return warehouse.write([(ALERTS, WHOLE_TABLE)], build)


def read_alerts(warehouse: TableStore) -> pd.DataFrame:
    """Every stored alert, sorted by raised_at then alert_id (``raised_at`` tz-aware UTC)."""
    frame = warehouse.read_partitions(ALERTS).to_pandas()
    frame["raised_at"] = pd.to_datetime(frame["raised_at"], utc=True)
    return frame.sort_values(["raised_at", "alert_id"], kind="stable").reset_index(drop=True)
