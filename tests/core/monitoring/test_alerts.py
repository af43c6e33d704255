"""Alerts for failed asset checks: the webhook against a loopback server (retries, no retry, unreachable),
the alerts table (idempotent), and secrets (API keys, the webhook URL) kept out of bodies, logs and rows."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from ibf_core.processes import free_port

from ibf_core.monitoring.alerts import (
    ALERTS,
    Alert,
    known_secrets,
    read_alerts,
    record_alerts,
    redact,
    send_webhook,
    slack_body,
)
from ibf_core.settings import get_settings
from ibf_core.storage.warehouse import Warehouse
from helpers.webhook import TOKEN_PATH, Hook

API_KEY = "supersecretkey123"
FAST = {"wait_s": 0.01, "timeout": 5.0}


def make_alert(n: int = 0, **overrides) -> Alert:
    values = dict(
        asset="market_bars",
        check_name="no_gaps",
        partition=f"AAPL|2024-0{n % 9 + 1}",
        severity="ERROR",
        description=f"{n + 3} missing sessions",
        metadata={"missing": ["2024-01-02", "2024-01-03"], "count": n + 3},
        run_id=f"run-{n}",
        evaluation_id=f"eval-{n}",
        raised_at=dt.datetime(2024, 3, 1, 12, 0, n, tzinfo=dt.timezone.utc),
    )
    values.update(overrides)
    return Alert(**values)


@pytest.fixture
def warehouse() -> Warehouse:
    return Warehouse(get_settings().home_dir)


# ----- the alert and its body -----------------------------------------------------------------------
def test_alert_id_is_stable_and_distinguishes_evaluations():
    a, b = make_alert(1), make_alert(1, description="other text", run_id="other-run")
    assert a.alert_id == b.alert_id and len(a.alert_id) == 16
    assert int(a.alert_id, 16) >= 0
    assert make_alert(1, evaluation_id="eval-x").alert_id != a.alert_id
    assert make_alert(1, partition="").alert_id != a.alert_id


def test_alert_normalizes_severity_and_time():
    alert = make_alert(severity="warn", raised_at=dt.datetime(2024, 3, 1, 12, 0))
    assert alert.severity == "WARN"
    assert alert.raised_at.tzinfo is not None and alert.raised_at.utcoffset() == dt.timedelta(0)
    eastern = dt.timezone(dt.timedelta(hours=-5))
    assert make_alert(raised_at=dt.datetime(2024, 3, 1, 7, 0, tzinfo=eastern)).raised_at.hour == 12
    with pytest.raises(ValueError, match="severity"):
        make_alert(severity="INFO")


def test_slack_body_has_text_and_blocks():
    body = slack_body(make_alert(2))
    assert isinstance(body["text"], str) and "\n" not in body["text"]
    assert body["text"].startswith("ALERT ERROR market_bars.no_gaps [AAPL|2024-03]")
    assert isinstance(body["blocks"], list) and body["blocks"]
    fields = [f["text"] for b in body["blocks"] for f in b.get("fields", [])]
    for expected in ("market_bars", "no_gaps", "AAPL|2024-03", "ERROR", "run-2"):
        assert any(expected in f for f in fields), expected
    assert "eval-2" not in json.dumps(body)  # only the alert's reported fields
    assert any("2024-01-02" in b.get("text", {}).get("text", "") for b in body["blocks"])  # metadata
    json.dumps(body)  # serializable


def test_redact_is_recursive_and_ignores_short_secrets():
    value = {"k-abcd": ["x abcd y", ("abcd",), 3, None], "n": 1.5, "s": "ab"}
    out = redact(value, ["abcd", "ab", ""])
    assert out == {"k-***": ["x *** y", ("***",), 3, None], "n": 1.5, "s": "ab"}
    assert redact("a-longsecret-b", ["secret", "longsecret"]) == "a-***-b"


def test_known_secrets_reads_names_and_the_webhook(monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", API_KEY)
    monkeypatch.setenv("SOME_ACCESS_TOKEN", "tok-987654")
    monkeypatch.setenv("DB_PASSWORD", "hunter22")
    monkeypatch.setenv("IBF_ALERT_WEBHOOK", "https://hooks.example.com" + TOKEN_PATH)
    monkeypatch.setenv("UNRELATED_VALUE", "not-a-secret")
    secrets = known_secrets()
    for expected in (API_KEY, "tok-987654", "hunter22", "https://hooks.example.com" + TOKEN_PATH, TOKEN_PATH):
        assert expected in secrets
    assert "not-a-secret" not in secrets


# ----- the webhook ----------------------------------------------------------------------------------
def test_send_webhook_retries_5xx_then_succeeds():
    with Hook(fail_first=2, fail_status=500) as hook:
        assert send_webhook(hook.url, make_alert(), attempts=4, **FAST) == "sent"
    assert hook.requests == 3
    assert hook.paths == [TOKEN_PATH] * 3
    assert hook.bodies[-1] == slack_body(make_alert())


def test_send_webhook_retries_429():
    with Hook(fail_first=1, fail_status=429) as hook:
        assert send_webhook(hook.url, make_alert(), **FAST) == "sent"
    assert hook.requests == 2


def test_send_webhook_gives_up_after_attempts():
    with Hook(fail_first=10, fail_status=503) as hook:
        status = send_webhook(hook.url, make_alert(), attempts=3, **FAST)
    assert hook.requests == 3
    assert status.startswith("failed: ") and "503" in status
    assert TOKEN_PATH not in status and "T0KEN" not in status


def test_send_webhook_does_not_retry_400():
    with Hook(fail_first=10, fail_status=400) as hook:
        status = send_webhook(hook.url, make_alert(), **FAST)
    assert hook.requests == 1
    assert status.startswith("failed: ") and "400" in status
    assert hook.url not in status and "T0KEN" not in status


def test_send_webhook_unreachable_port_fails_without_the_url(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"
    status = send_webhook(url, make_alert(), attempts=2, **FAST)
    assert status.startswith("failed: ")
    assert url not in status and "T0KEN" not in status
    assert "T0KEN" not in caplog.text


def test_send_webhook_bad_url_fails_without_raising():
    status = send_webhook("ftp://example.invalid" + TOKEN_PATH, make_alert(), **FAST)
    assert status.startswith("failed: ") and "T0KEN" not in status


# ----- recording ------------------------------------------------------------------------------------
def test_record_alerts_writes_rows_once(warehouse, caplog):
    caplog.set_level(logging.WARNING, logger="ibf.alerts")
    alerts = [make_alert(0), make_alert(1, severity="WARN", partition="")]
    with Hook() as hook:
        rows = record_alerts(warehouse, alerts, hook.url, wait_s=0.01)
        assert [r["alert_id"] for r in rows] == [a.alert_id for a in alerts]
        assert [r["webhook_status"] for r in rows] == ["sent", "sent"]
        assert hook.requests == 2

        table = Warehouse(get_settings().home_dir).query("SELECT * FROM alerts ORDER BY raised_at")
        assert list(table.columns) == ALERTS.column_names
        assert table["alert_id"].tolist() == [a.alert_id for a in alerts]
        assert table["severity"].tolist() == ["ERROR", "WARN"]
        assert table["partition"].tolist() == ["AAPL|2024-01", ""]
        assert json.loads(table["metadata"].iloc[0]) == alerts[0].metadata
        assert table["run_id"].tolist() == ["run-0", "run-1"]
        assert table["raised_at"].dt.tz is not None
        lines = [r.getMessage() for r in caplog.records if r.name == "ibf.alerts"]
        assert lines == [
            "ALERT ERROR market_bars.no_gaps [AAPL|2024-01]: 3 missing sessions",
            "ALERT WARN market_bars.no_gaps []: 4 missing sessions",
        ]

        caplog.clear()
        files = sorted((warehouse.lake_dir / "alerts").glob("*.parquet"))
        again = record_alerts(warehouse, alerts, hook.url, wait_s=0.01)
        assert again == []
        assert hook.requests == 2  # nothing posted again
        assert sorted((warehouse.lake_dir / "alerts").glob("*.parquet")) == files
        assert not [r for r in caplog.records if r.name == "ibf.alerts"]

        # one new alert among old ones: only it is logged, posted and written
        more = record_alerts(warehouse, [*alerts, make_alert(2), make_alert(2)], hook.url, wait_s=0.01)
        assert [r["alert_id"] for r in more] == [make_alert(2).alert_id]
        assert hook.requests == 3
    assert len(warehouse.query("SELECT * FROM alerts")) == 3
    stored = read_alerts(warehouse)
    assert stored["alert_id"].is_unique and len(stored) == 3
    assert stored["raised_at"].is_monotonic_increasing


def test_record_alerts_without_webhook(warehouse):
    logged: list[str] = []
    rows = record_alerts(warehouse, [make_alert(5)], None, log=logged.append)
    assert [r["webhook_status"] for r in rows] == ["not configured"]
    assert logged == ["ALERT ERROR market_bars.no_gaps [AAPL|2024-06]: 8 missing sessions"]
    assert read_alerts(warehouse)["webhook_status"].tolist() == ["not configured"]


def test_record_alerts_empty_and_fresh_view(warehouse):
    assert record_alerts(warehouse, [], None) == []
    assert warehouse.query("SELECT count(*) AS n FROM alerts")["n"].iloc[0] == 0
    assert read_alerts(warehouse).columns.tolist() == ALERTS.column_names


def test_record_alerts_webhook_failure_is_stored_and_stops_posting(warehouse):
    with Hook(fail_first=100, fail_status=500) as hook:
        rows = record_alerts(warehouse, [make_alert(0), make_alert(1)], hook.url, attempts=2, wait_s=0.01)
    assert hook.requests == 2  # one retry cycle for the first alert, the second is not posted
    assert rows[0]["webhook_status"].startswith("failed: HTTP 500")
    assert rows[1]["webhook_status"].startswith("failed: not sent")
    assert all("T0KEN" not in r["webhook_status"] for r in rows)
    assert read_alerts(warehouse)["webhook_status"].str.startswith("failed: ").all()


def test_secrets_stay_out_of_body_logs_and_rows(warehouse, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # httpx's INFO request line (which names the URL) included
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", API_KEY)
    leaky = make_alert(
        7,
        description=f"fetch failed: https://www.alphavantage.co/query?apikey={API_KEY}&function=NEWS",
        metadata={"url": f"https://x?apikey={API_KEY}", API_KEY: "as a key", "nested": [{"k": f"pre{API_KEY}post"}]},
    )
    with Hook() as hook:
        monkeypatch.setenv("IBF_ALERT_WEBHOOK", hook.url)
        rows = record_alerts(warehouse, [leaky], hook.url, wait_s=0.01)
        assert rows[0]["webhook_status"] == "sent"
        body_text = json.dumps(hook.bodies)
        url = hook.url
    assert hook.requests == 1
    assert API_KEY not in body_text
    assert "***" in body_text  # redacted, not dropped

    stored = warehouse.query("SELECT * FROM alerts")
    stored_text = stored.astype(str).to_json()
    rows_text = json.dumps(rows, default=str)
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP Request" in log_text  # httpx did log its request line ...
    for text in (stored_text, rows_text, log_text):
        assert API_KEY not in text
        assert url not in text  # ... but without the URL
        assert "T0KEN-abc123" not in text
    assert "***" in stored["description"].iloc[0]
    assert json.loads(stored["metadata"].iloc[0])["nested"] == [{"k": "pre***post"}]


def test_webhook_url_in_description_is_redacted_without_env(warehouse, caplog):
    """The URL passed in (not only IBF_ALERT_WEBHOOK) is a secret for the body, the log line and the row."""
    caplog.set_level(logging.WARNING, logger="ibf.alerts")
    with Hook() as hook:
        alert = make_alert(8, description=f"posting to {hook.url} failed", metadata={"token": TOKEN_PATH})
        record_alerts(warehouse, [alert], hook.url, wait_s=0.01)
        body_text = json.dumps(hook.bodies)
    stored_text = read_alerts(warehouse).astype(str).to_json()
    for text in (body_text, stored_text, caplog.text):
        assert "T0KEN-abc123" not in text
