"""The Dagster instance in a real PostgreSQL (IBF_DAGSTER_PG_URL): runs, event logs and materializations go
there, batched; a Postgres that cannot be reached is one error line naming the setting, and nothing is written."""

from __future__ import annotations

import pytest

from helpers.cli import run_ibf
from ibf_core.processes import free_port
from ibf_dagster.stack.postgres import local_postgres

BACKFILL = ["backfill", "--symbols", "AAPL,MSFT", "--start", "2013-01-02", "--end", "2013-02-28", "--assets", "market_bars,features"]


@pytest.mark.slow
def test_a_backfill_on_a_postgres_instance_records_its_runs_and_events_there(ibf_home, monkeypatch):
    import psycopg2

    with local_postgres() as pg:
        url = pg.create_database("dagster")
        monkeypatch.setenv("IBF_DAGSTER_PG_URL", url)
        done = run_ibf(*BACKFILL)
        assert done.returncode == 0, done.stderr[-2000:]
        again = run_ibf(*BACKFILL)  # a second process finds the instance's schema in place
        assert again.returncode == 0, again.stderr[-2000:]
        con = psycopg2.connect(url)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT status, count(*) FROM runs GROUP BY 1")
                assert dict(cur.fetchall()) == {"SUCCESS": 4}  # one run per asset, two backfills
                cur.execute("SELECT asset_key, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY 1 ORDER BY 1")
                materialized = dict(cur.fetchall())
        finally:
            con.close()
        # 2 symbols x 2 months x 2 assets per backfill, twice
        assert materialized == {'["features"]': 8, '["market_bars"]': 8}, materialized
        written = (ibf_home / "dagster" / "dagster.yaml").read_text()
        assert "env: IBF_DAGSTER_PG_URL" in written and url not in written  # the URL (a secret) stays in the env
        assert not list((ibf_home / "dagster").rglob("runs.db"))  # no SQLite run storage was created
        counts = run_ibf("sql", "SELECT count(*) AS n FROM market_bars", "-f", "csv")
        assert counts.stdout.splitlines() == ["n", "80"]  # 40 sessions x 2 symbols


def test_an_unreachable_postgres_is_one_error_line_naming_the_setting_and_nothing_is_written(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_DAGSTER_PG_URL", f"postgresql://ibf:S3cretPw@127.0.0.1:{free_port()}/dagster")
    done = run_ibf(*BACKFILL)
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: IBF_DAGSTER_PG_URL: cannot connect to the Dagster instance's Postgres") and "S3cretPw" not in line
    assert not (ibf_home / "lake").exists() or not any((ibf_home / "lake").rglob("*.parquet"))


@pytest.mark.slow
def test_a_missing_database_on_a_real_server_is_named(ibf_home, monkeypatch):
    with local_postgres() as pg:
        monkeypatch.setenv("IBF_DAGSTER_PG_URL", pg.url("no_such_db"))
        done = run_ibf(*BACKFILL)
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: IBF_DAGSTER_PG_URL:") and 'database "no_such_db" does not exist' in line
    assert not (ibf_home / "lake").exists() or not any((ibf_home / "lake").rglob("*.parquet"))
