"""check_alerts: every failed check of any asset -> an alerts row, a log line and a webhook POST, once."""

from ibf_core.settings import get_settings
from ibf_core.storage.warehouse import Warehouse
from helpers.webhook import TOKEN_PATH, Hook
from helpers.sensors import sensor_context


def test_failed_checks_become_alerts_and_webhook_posts(monkeypatch):
    with Hook() as hook:
        for name, value in {"IBF_UNIVERSE": "IBM,MSFT", "IBF_HISTORY_START": "2012-01-01", "IBF_DATE_PARTITIONS": "year",
                            "IBF_ALERT_WEBHOOK": hook.url}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        from ibf_dagster.definitions import build_definitions
        from ibf_dagster.instance import get_instance
        from ibf_dagster.runner import backfill

        runs = backfill(settings, None, None, "2013-03-01", "market_bars", "sample", None)
        assert runs[0].checks["fresh"] is False  # the sample ends in 2013: the freshness check fails (WARN)
        defs = build_definitions(settings)
        sensor = defs.get_sensor_def("check_alerts")
        instance = get_instance(settings)
        result = sensor(sensor_context(defs, instance))
        alerts = Warehouse(settings.home_dir).query("SELECT * FROM alerts")
        failed = sorted(name for name, passed in runs[0].checks.items() if not passed)
        assert sorted(alerts["check_name"]) == failed
        assert set(alerts["asset"]) == {"market_bars"} and set(alerts["webhook_status"]) == {"sent"}
        assert hook.requests == len(failed)
        assert all("fresh" in str(b) or "jumps" in str(b) for b in hook.bodies)
        assert TOKEN_PATH not in alerts.to_csv()  # the webhook URL (a secret) is never stored
        # the next tick sees nothing new: no duplicate rows, no second POST
        sensor(sensor_context(defs, instance, result.cursor))
        assert len(Warehouse(settings.home_dir).query("SELECT * FROM alerts")) == len(failed)
        assert hook.requests == len(failed)
