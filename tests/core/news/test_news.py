"""News sentiment: the Alpha Vantage client against the loopback server, storage, trading-day assignment,
daily aggregation, the VADER file path and the quota resume."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd
import pytest

from ibf_core.news import (
    AlphaVantageClient,
    BadRequestError,
    MalformedResponseError,
    MissingApiKeyError,
    NewsFileError,
    NewsIncompleteError,
    NotEntitledError,
    RateLimitedError,
    ServiceUnavailableError,
    aggregate_daily,
    assign_trading_day,
    daily_news,
    load_news,
    read_articles,
    read_mentions,
    session_window,
)
from ibf_core.news.feed import parse_av_time, sentiment_label
from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, Faults, parse_faults, serve, synthetic_feed
from ibf_core.sim.alphavantage.content import make_article
from ibf_core.news.file import score_news_file, vader_scores
from ibf_core.news.store import NEWS_ARTICLES, NEWS_MENTIONS, NewsProgress, source_id, write_news
from ibf_core.settings import load_settings
from ibf_core.storage.tables import NEWS_SENTIMENT
from ibf_core.storage.warehouse import Warehouse

KEY = "SECRET-AV-KEY-7f3a9c"
ET = "America/New_York"

# A small hand-made feed (times are US/Eastern, as Alpha Vantage sends them).
FEED = [
    make_article("https://n.example/a1", "20240102T093000", {"AAPL": (0.9, 0.40)}, topics=[("Earnings", 0.8)]),
    make_article("https://n.example/a2", "20240102T155400", {"AAPL": (0.5, -0.20), "MSFT": (0.7, 0.30)}),
    make_article("https://n.example/a3", "20240102T155500", {"AAPL": (0.5, 0.10)}),  # at close-5min: next day
    make_article("https://n.example/a4", "20240103T120000", {"MSFT": (1.0, -0.50)}),
    make_article("https://n.example/a5", "20240105T180000", {"AAPL": (0.3, 0.20), "MSFT": (0.2, 0.0)}),  # Fri eve
]


@pytest.fixture(scope="module")
def sim():
    with AlphaVantageSimulator(FEED) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_sim(request):
    """Every test starts with the module's simulator healthy, fed with FEED and a fresh quota."""
    if "sim" in request.fixturenames:
        server = request.getfixturevalue("sim")
        server.clear_faults()
        server.reset_quota()
        server.set_articles(FEED)
    yield


def client_for(sim, **kw) -> AlphaVantageClient:
    options = dict(timeout=2.0, retries=2, backoff=0.01, max_backoff=0.02)
    options.update(kw)
    return AlphaVantageClient(sim.url, KEY, **options)


def window(lo="2024-01-01 00:00", hi="2024-01-31 00:00"):
    return pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC")


def news_settings(home: Path, **kw):
    base = dict(home=home, news_source="alphavantage", alphavantage_requests_per_day=1000)
    base.update(kw)
    return load_settings(**base)


def lake_files(home: Path) -> dict[str, bytes]:
    lake = home / "lake"
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for p in sorted(lake.rglob("*.parquet"))
        if p.parent.name in (NEWS_ARTICLES.name, NEWS_MENTIONS.name) and not p.name.startswith("_")
    }


# ----- the client against the loopback server ----------------------------------------------------------
def test_client_parses_a_page(sim):
    with client_for(sim) as client:
        page = client.news_sentiment("aapl", *window())
    assert [a.url for a in page.articles] == ["https://n.example/a1", "https://n.example/a2", "https://n.example/a3", "https://n.example/a5"]
    first = page.articles[0]
    assert first.published_at == pd.Timestamp("2024-01-02 14:30", tz="UTC")  # 09:30 EST
    assert json.loads(first.topics) == [{"relevance_score": "0.800000", "topic": "Earnings"}]
    m = page.mentions[1]
    assert (m.symbol, m.relevance, m.ticker_sentiment, m.label) == ("AAPL", 0.5, -0.2, "Somewhat-Bearish")
    assert not page.full and page.rejected == ()
    params = sim.request_log[-1].params
    assert params["tickers"] == "AAPL" and params["sort"] == "EARLIEST" and params["limit"] == "1000"
    assert params["time_from"] == "20231231T1900" and params["time_to"] == "20240130T1900"
    assert params["apikey"] == "***"


@pytest.mark.parametrize("key", ["Information", "Note"])
def test_daily_rate_limit_both_keys(sim, key):
    sim.set_faults(rate_limit_after=0, rate_limit_key=key)
    with client_for(sim) as client, pytest.raises(RateLimitedError) as info:
        client.news_sentiment("AAPL", *window())
    assert info.value.daily and "25 requests per day" in str(info.value)
    assert len(sim.request_log) and sim.request_log[-1].outcome == "rate_limit"


def test_burst_limit_is_retried_then_raised(sim):
    sim.set_faults(burst_limits=1)
    with client_for(sim) as client:
        assert len(client.news_sentiment("AAPL", *window()).articles) == 4
        assert client.requests_sent == 2
    sim.set_faults(burst_limits=10)
    with client_for(sim, retries=1) as client, pytest.raises(RateLimitedError) as info:
        client.news_sentiment("AAPL", *window())
    assert not info.value.daily


@pytest.mark.parametrize(
    ("faults", "error", "text"),
    [
        ({"premium": True}, NotEntitledError, "premium endpoint"),
        ({"demo": True}, NotEntitledError, "demo"),
        ({"error_message": True}, BadRequestError, "Invalid API call"),
        ({"malformed_json": 1}, MalformedResponseError, "not JSON"),
        ({"missing_feed": 1}, MalformedResponseError, "no 'feed'"),
    ],
)
def test_error_bodies_map_to_typed_errors(sim, faults, error, text):
    sim.set_faults(**faults)
    with client_for(sim) as client, pytest.raises(error) as info:
        client.news_sentiment("AAPL", *window())
    message = str(info.value)
    assert text in message and "AAPL" in message and KEY not in message
    assert type(info.value) is error  # e.g. a premium notice is not mistaken for a rate limit


def test_missing_field_article_is_skipped_counted_and_named(sim):
    sim.set_faults(missing_fields={"ticker_sentiment_score"}, bad_articles=1)
    with client_for(sim) as client:
        page = client.news_sentiment("AAPL", *window())
    assert len(page.articles) == 3 and len(page.rejected) == 1
    bad = page.rejected[0]
    assert bad.url == "https://n.example/a1" and bad.field == "ticker_sentiment[AAPL].ticker_sentiment_score"
    assert "is missing" in str(bad)


def test_missing_url_and_strict_mode(sim):
    sim.set_faults(missing_fields={"url"}, bad_articles=1)
    with client_for(sim) as client:
        page = client.news_sentiment("AAPL", *window())
    assert page.rejected[0].field == "url" and page.rejected[0].url is None
    sim.set_faults(missing_fields={"time_published"}, bad_articles=1)
    with client_for(sim, strict=True) as client, pytest.raises(MalformedResponseError) as info:
        client.news_sentiment("AAPL", *window())
    assert info.value.field == "time_published" and info.value.url == "https://n.example/a1"
    assert "https://n.example/a1" in str(info.value) and "time_published" in str(info.value)


def test_every_article_bad_is_a_malformed_response(sim):
    sim.set_faults(missing_fields={"ticker_sentiment"})
    with client_for(sim) as client, pytest.raises(MalformedResponseError) as info:
        client.news_sentiment("AAPL", *window())
    assert info.value.field == "ticker_sentiment" and "all 4 articles are invalid" in str(info.value)


def test_numeric_string_scores_are_parsed(sim):
    with client_for(sim) as client:
        plain = client.news_sentiment("AAPL", *window())
        sim.set_faults(string_scores=True)
        strings = client.news_sentiment("AAPL", *window())
    assert strings.articles == plain.articles and strings.mentions == plain.mentions
    assert plain.articles[0].overall_sentiment_score == pytest.approx(0.4)


def test_garbage_scores_are_rejected_with_field_and_url(sim):
    sim.set_faults(garbage_scores=True, bad_articles=2)
    with client_for(sim) as client:
        page = client.news_sentiment("AAPL", *window())
    assert len(page.articles) == 2 and [r.url for r in page.rejected] == ["https://n.example/a1", "https://n.example/a2"]
    assert page.rejected[0].field == "overall_sentiment_score" and "'N/A'" in page.rejected[0].reason


def test_http_500_is_retried_then_succeeds(sim):
    sim.set_faults(http_500=2)
    with client_for(sim, retries=2) as client:
        page = client.news_sentiment("AAPL", *window())
    assert len(page.articles) == 4 and client.requests_sent == 3
    assert [r.outcome for r in sim.request_log[-3:]] == ["http_500", "http_500", "feed:4"]
    sim.set_faults(http_500=5)
    with client_for(sim, retries=1) as client, pytest.raises(ServiceUnavailableError) as info:
        client.news_sentiment("AAPL", *window())
    assert "HTTP 500" in str(info.value) and "2 attempts" in str(info.value)


def test_slow_reply_times_out(sim):
    sim.set_faults(reply_delay=0.8)
    started = time.monotonic()
    with client_for(sim, timeout=0.2, retries=1) as client, pytest.raises(ServiceUnavailableError) as info:
        client.news_sentiment("AAPL", *window())
    assert time.monotonic() - started < 0.75
    assert "no answer within 0.2s" in str(info.value)


def test_connection_refused_is_unavailable():
    client = AlphaVantageClient("http://127.0.0.1:9", KEY, timeout=0.5, retries=1, backoff=0.01)
    with client, pytest.raises(ServiceUnavailableError) as info:
        client.news_sentiment("AAPL", *window())
    assert KEY not in str(info.value)


def test_paging_forward_by_time(sim):
    base = pd.Timestamp("2024-02-05 10:00")
    # 9 articles, two pairs sharing a minute across page boundaries
    stamps = [base + pd.Timedelta(minutes=m, seconds=s) for m, s in [(0, 0), (1, 0), (2, 5), (2, 40), (3, 0), (4, 0), (4, 30), (5, 0), (6, 0)]]
    sim.set_articles([make_article(f"https://n.example/p{i}", ts.strftime("%Y%m%dT%H%M%S"), ["IBM"]) for i, ts in enumerate(stamps)])
    with client_for(sim) as client:
        pages = list(client.iter_pages("IBM", *window("2024-02-01", "2024-02-10"), limit=3))
    urls = {a.url for p in pages for a in p.articles}
    assert urls == {f"https://n.example/p{i}" for i in range(9)}
    assert all(p.full for p in pages[:-1]) and not pages[-1].full
    froms = [r.params["time_from"] for r in sim.request_log[-len(pages):]]
    assert froms == sorted(froms) and len(set(froms)) == len(froms)


def test_paging_does_not_loop_on_a_crowded_minute(sim, caplog):
    sim.set_articles([make_article(f"https://n.example/c{i}", "20240205T100000", ["IBM"]) for i in range(5)])
    with client_for(sim) as client:
        pages = list(client.iter_pages("IBM", *window("2024-02-01", "2024-02-10"), limit=3))
    # the 3rd page starts a minute later: the crowded minute's 4th and 5th article are lost, with a warning
    assert len(pages) == 3 and "may be missed" in caplog.text


def test_serve_blocks_until_stopped():
    import threading

    stop, lines = threading.Event(), []
    thread = threading.Thread(target=serve, kwargs=dict(port=0, articles=FEED, announce=lines.append, stop_event=stop))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.02)
        url = lines[0].split(" listening on ")[1].split(" ")[0]
        with AlphaVantageClient(url, KEY, timeout=2, retries=0) as client:
            assert len(client.news_sentiment("MSFT", *window()).articles) == 3
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and "stopping" in lines[-1]
    assert synthetic_feed(seed=1) == synthetic_feed(seed=1)


def test_parse_faults_and_unknown_fault():
    faults = parse_faults(["rate_limit_after=3", "missing_fields=url,title", "premium=1", "reply_delay=0.5", "bad_articles=none"])
    assert faults == Faults(rate_limit_after=3, missing_fields=frozenset({"url", "title"}), premium=True, reply_delay=0.5)
    with pytest.raises(ValueError, match="unknown"):
        Faults.coerce({"nope": 1})


# ----- trading-day assignment --------------------------------------------------------------------------
def et(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=ET)


@pytest.mark.parametrize(
    ("published", "session"),
    [
        ("2012-11-23 12:54:59", "2012-11-23"),  # early close 13:00, cutoff 12:55
        ("2012-11-23 12:55:00", "2012-11-26"),
        ("2012-11-23 14:00:00", "2012-11-26"),  # after the early close, before the normal one
        ("2024-05-03 15:54:59", "2024-05-03"),
        ("2024-05-03 15:55:00", "2024-05-06"),  # Friday at close-5min -> Monday
        ("2024-05-03 19:30:00", "2024-05-06"),  # Friday evening -> Monday
        ("2024-05-04 11:00:00", "2024-05-06"),  # Saturday
        ("2024-07-04 10:00:00", "2024-07-05"),  # holiday
        ("2024-07-03 12:56:00", "2024-07-05"),  # early close before Independence Day
        ("2024-05-06 04:00:00", "2024-05-06"),  # pre-market
    ],
)
def test_assign_trading_day(published, session):
    assert assign_trading_day([et(published)]).iloc[0] == pd.Timestamp(session)


def test_assign_trading_day_margin_and_vectorized():
    stamps = pd.Series([et("2024-05-03 15:58"), et("2024-05-03 15:31"), pd.NaT])
    assert list(assign_trading_day(stamps, margin="0min"))[:2] == [pd.Timestamp("2024-05-03")] * 2
    out = assign_trading_day(stamps, margin=pd.Timedelta(minutes=30))
    assert list(out[:2]) == [pd.Timestamp("2024-05-06"), pd.Timestamp("2024-05-06")] and pd.isna(out[2])
    assert pd.isna(assign_trading_day([pd.Timestamp("1980-01-01", tz="UTC")]).iloc[0])


def test_session_window_and_av_times():
    lo, hi = session_window("2024-05-04", "2024-05-07")
    assert lo == et("2024-05-03 15:55") and hi == et("2024-05-07 15:55")
    assert session_window("2024-05-04", "2024-05-05") is None
    assert parse_av_time("20240503T155400") == pd.Timestamp("2024-05-03 19:54", tz="UTC")  # EDT
    assert parse_av_time("20240103T1554") == pd.Timestamp("2024-01-03 20:54", tz="UTC")  # EST
    assert parse_av_time("20240503T155400Z") == pd.Timestamp("2024-05-03 15:54", tz="UTC")
    assert parse_av_time("20240503T155400+0100") == pd.Timestamp("2024-05-03 14:54", tz="UTC")
    with pytest.raises(ValueError):
        parse_av_time("2024-05-03 15:54")


def test_labels_follow_av_thresholds():
    assert [sentiment_label(x) for x in (-0.35, -0.3, -0.15, -0.1, 0.1, 0.15, 0.34, 0.35)] == [
        "Bearish", "Somewhat-Bearish", "Somewhat-Bearish", "Neutral", "Neutral", "Somewhat-Bullish",
        "Somewhat-Bullish", "Bullish",
    ]  # fmt: skip


# ----- aggregation (hand-checked) ----------------------------------------------------------------------
def test_aggregate_daily_hand_checked():
    d1, d2, d3, d4 = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"])
    rows = [
        ("AAPL", d1, 1.0, 0.40), ("AAPL", d1, 0.5, -0.20), ("AAPL", d1, 0.5, 0.10),
        ("AAPL", d3, 0.0, 0.15),  # relevance 0: weighted mean undefined; 0.15 is bullish
        ("AAPL", d4, 0.5, -0.15), ("AAPL", d4, 0.5, 0.149),  # -0.15 bearish, 0.149 neutral
        ("AAPL", pd.Timestamp("2024-01-06"), 1.0, 0.9),  # not a session: ignored
        ("GOOG", d1, 1.0, 0.9),  # not requested: ignored
    ]  # fmt: skip
    mentions = pd.DataFrame(rows, columns=["symbol", "date", "relevance", "ticker_sentiment"])
    out = aggregate_daily(mentions, ["AAPL", "MSFT"], [d1, d2, d3, d4], window=3, min_periods=2)
    a = out[out["symbol"] == "AAPL"].set_index("date")
    assert list(a["news_count"]) == [3, 0, 1, 2]
    assert a.loc[d1, "news_sentiment_mean"] == pytest.approx(0.1)
    assert a.loc[d1, "news_sentiment_weighted"] == pytest.approx((0.4 - 0.1 + 0.05) / 2.0)  # 0.175
    assert a.loc[d1, "news_bullish_share"] == pytest.approx(1 / 3) and a.loc[d1, "news_bearish_share"] == pytest.approx(1 / 3)
    assert a.loc[d2, ["news_sentiment_mean", "news_sentiment_weighted", "news_bullish_share"]].isna().all()
    assert math.isnan(a.loc[d3, "news_sentiment_weighted"]) and a.loc[d3, "news_sentiment_mean"] == pytest.approx(0.15)
    assert a.loc[d3, "news_bullish_share"] == 1.0 and a.loc[d4, "news_bearish_share"] == 0.5
    assert a.loc[d4, "news_bullish_share"] == 0.0
    # z: past counts only. d3: past [3, 0] -> mean 1.5, sd 2.1213; d4: past [3, 0, 1] -> mean 4/3, sd 1.5275
    assert a["news_volume_z"].iloc[:2].isna().all()
    assert a.loc[d3, "news_volume_z"] == pytest.approx((1 - 1.5) / math.sqrt(4.5))
    assert a.loc[d4, "news_volume_z"] == pytest.approx((2 - 4 / 3) / math.sqrt(7 / 3))
    m = out[out["symbol"] == "MSFT"]
    assert list(m["news_count"]) == [0, 0, 0, 0] and m.drop(columns=["symbol", "date", "news_count"]).isna().all().all()
    assert list(out.columns) == [
        "symbol", "date", "news_count", "news_sentiment_mean", "news_sentiment_weighted",
        "news_bullish_share", "news_bearish_share", "news_volume_z",
    ]  # fmt: skip
    assert out["news_count"].dtype == "int64"


def test_daily_news_z_looks_back_before_start_and_not_before_first_news(ibf_home):
    from ibf_core.calendar import trading_days

    wh = Warehouse(ibf_home)
    days = trading_days("2024-01-02", "2024-03-28")
    rows = []
    for i, day in enumerate(days[5:]):  # news from the 7th session on (i=0 has none)
        for k in range(i % 4):
            ts = pd.Timestamp(day).tz_localize(ET) + pd.Timedelta(hours=10, minutes=k)
            rows.append(dict(symbol="IBM", date=day, url=f"u{i}-{k}", published_at=ts, relevance=1.0,
                             ticker_sentiment=0.2, label="Somewhat-Bullish", origin="file"))
    mentions = pd.DataFrame(rows)
    articles = pd.DataFrame(dict(url=mentions["url"], title="t", summary="", source="", published_at=mentions["published_at"],
                                 overall_sentiment_score=0.2, overall_sentiment_label="Somewhat-Bullish", topics="[]", origin="file"))
    write_news(wh, articles, mentions)
    full = daily_news(wh, ["IBM"], days[0], days[-1]).set_index("date")
    late = daily_news(wh, ["IBM"], days[40], days[-1]).set_index("date")
    pd.testing.assert_frame_equal(full.loc[late.index], late)
    # 6 sessions before the first stored article are not a baseline; z needs 20 (min_periods) observed ones
    assert full["news_volume_z"].iloc[:26].isna().all() and full["news_volume_z"].iloc[26:].notna().all()
    assert list(full["news_count"].iloc[:6]) == [0] * 6
    assert daily_news(wh, ["IBM"], "2024-05-04", "2024-05-05").empty
    assert daily_news(wh, [], days[0], days[-1]).empty


# ----- load_news with Alpha Vantage: storage, dedupe, idempotency ---------------------------------------
def test_load_news_stores_articles_once_and_mentions_per_symbol(sim, ibf_home, monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    settings = news_settings(ibf_home, alphavantage_url=sim.url)
    wh = Warehouse(ibf_home)
    result = load_news(settings, wh, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08")
    assert result.complete and result.requests == 2 and result.articles == 5
    articles = read_articles(wh)
    assert list(articles["url"]) == [f"https://n.example/a{i}" for i in range(1, 6)]  # a2, a5 once
    assert set(articles["origin"]) == {"alphavantage"}
    mentions = read_mentions(wh)
    dates = {(r.symbol, r.url[-2:]): r.date.date().isoformat() for r in mentions.itertuples()}
    assert dates == {
        ("AAPL", "a1"): "2024-01-02", ("AAPL", "a2"): "2024-01-02", ("AAPL", "a3"): "2024-01-03",
        ("MSFT", "a2"): "2024-01-02", ("MSFT", "a4"): "2024-01-03",
        ("AAPL", "a5"): "2024-01-08", ("MSFT", "a5"): "2024-01-08",
    }  # fmt: skip
    # the DuckDB views see the same rows
    counts = wh.query("SELECT (SELECT count(*) FROM news_articles) a, (SELECT count(*) FROM news_mentions) m")
    assert counts.iloc[0].tolist() == [5, 7]
    daily = daily_news(wh, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08")
    assert len(daily) == 2 * 5 and list(daily.loc[daily["symbol"] == "AAPL", "news_count"]) == [2, 1, 0, 0, 1]
    # the frame fits the news_sentiment table the Dagster asset writes
    wh.replace_slice(NEWS_SENTIMENT, daily, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08")
    stored = wh.read(NEWS_SENTIMENT, ["AAPL", "MSFT"])
    assert list(stored["news_count"]) == list(daily["news_count"])


def test_rerun_is_idempotent_and_skips_fetched_ranges(sim, ibf_home, monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    settings = news_settings(ibf_home, alphavantage_url=sim.url)
    wh = Warehouse(ibf_home)
    load_news(settings, wh, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08")
    first = lake_files(ibf_home)
    again = load_news(settings, wh, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08")
    assert again.requests == 0 and lake_files(ibf_home) == first
    # forget the progress: the same fetch again writes byte-identical files
    for path in (ibf_home / "lake" / "news_progress").glob("*.json"):
        path.unlink()
    refetched = load_news(settings, wh, ["MSFT", "AAPL"], "2024-01-02", "2024-01-08")
    assert refetched.requests == 2 and lake_files(ibf_home) == first


def test_url_seen_again_with_a_new_month_stays_one_row(ibf_home):
    wh = Warehouse(ibf_home)

    def frames(published: str):
        ts = pd.Timestamp(published, tz="UTC")
        art = pd.DataFrame([dict(url="u1", title="t", summary="", source="", published_at=ts, overall_sentiment_score=0.1,
                                 overall_sentiment_label="Neutral", topics="[]", origin="alphavantage")])
        men = pd.DataFrame([dict(symbol="IBM", date=assign_trading_day([ts]).iloc[0], url="u1", published_at=ts,
                                 relevance=1.0, ticker_sentiment=0.1, label="Neutral", origin="alphavantage")])
        return art, men

    write_news(wh, *frames("2024-01-31 23:00"))
    write_news(wh, *frames("2024-02-01 15:00"))
    articles, mentions = read_articles(wh), read_mentions(wh)
    assert len(articles) == 1 and articles["published_at"].iloc[0] == pd.Timestamp("2024-02-01 15:00", tz="UTC")
    assert len(mentions) == 1 and mentions["date"].iloc[0] == pd.Timestamp("2024-02-01")
    assert sorted(p.name for p in (ibf_home / "lake" / "news_articles").glob("2*.parquet")) == ["2024-02.parquet"]


def test_error_mid_run_writes_nothing(sim, ibf_home, monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    sim.set_faults(faults_after=1, malformed_json=1)  # AAPL's page succeeds, MSFT's is garbled
    settings = news_settings(ibf_home, alphavantage_url=sim.url)
    wh = Warehouse(ibf_home)
    client = client_for(sim)
    with pytest.raises(MalformedResponseError):
        load_news(settings, wh, ["AAPL", "MSFT"], "2024-01-02", "2024-01-08", client=client)
    assert lake_files(ibf_home) == {}
    assert NewsProgress(wh, source_id(sim.url)).covered("AAPL") == []


def test_none_source_and_missing_key(ibf_home, monkeypatch):
    wh = Warehouse(ibf_home)
    result = load_news(load_settings(home=ibf_home), wh, ["AAPL"], "2024-01-02", "2024-01-08")
    assert result.source == "none" and result.mentions.empty and "none" in result.note and result.articles == 0
    assert not (ibf_home / "lake").exists()
    monkeypatch.delenv("ALPHAVANTAGE_API_KEY", raising=False)
    with pytest.raises(MissingApiKeyError, match="ALPHAVANTAGE_API_KEY"):
        load_news(news_settings(ibf_home, alphavantage_url="http://127.0.0.1:9"), wh, ["AAPL"], "2024-01-02", "2024-01-08")


# ----- quota and resume ----------------------------------------------------------------------------------
QUOTA_SYMBOLS = ["AAPL", "IBM", "MSFT"]
QUOTA_FEED = synthetic_feed(QUOTA_SYMBOLS, "2024-01-01", "2024-02-29", per_day=2, seed=3)


def _stored(home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    wh = Warehouse(home)
    return read_articles(wh), read_mentions(wh)


@pytest.mark.parametrize("key", ["Information", "Note"])
def test_quota_exhausted_mid_run_then_resume(sim, tmp_path, monkeypatch, key):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    sim.set_articles(QUOTA_FEED)
    args = (QUOTA_SYMBOLS, "2024-01-02", "2024-02-28")
    full_home = tmp_path / "unlimited"
    full = load_news(news_settings(full_home, alphavantage_url=sim.url), Warehouse(full_home), *args, page_limit=40)
    assert full.complete and full.requests >= 9

    home = tmp_path / "limited"
    wh = Warehouse(home)
    settings = news_settings(home, alphavantage_url=sim.url)
    sim.reset_quota()
    sim.set_faults(rate_limit_after=4, rate_limit_key=key)
    first = load_news(settings, wh, *args, page_limit=40)
    assert not first.complete and first.requests == 5  # 4 served, the 5th said "rate limit"
    assert "quota exhausted" in first.note and "resumes" in first.note and "IBM" in first.note
    assert set(first.remaining) >= {"IBM", "MSFT"}
    with pytest.raises(NewsIncompleteError):
        first.raise_if_incomplete()
    kept_articles, _ = _stored(home)
    assert 0 < len(kept_articles) < full.articles

    sim.reset_quota()  # a new day
    sim.clear_faults()
    second = load_news(settings, wh, *args, page_limit=40)
    assert second.complete and second.requests < full.requests
    for got, want in zip(_stored(home), _stored(full_home)):
        pd.testing.assert_frame_equal(got, want)
    assert load_news(settings, wh, *args, page_limit=40).requests == 0


def test_own_daily_budget_stops_before_sending(sim, ibf_home, monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    sim.set_articles(QUOTA_FEED)
    settings = news_settings(ibf_home, alphavantage_url=sim.url, alphavantage_requests_per_day=3)
    wh = Warehouse(ibf_home)
    before = len(sim.request_log)
    now = pd.Timestamp("2024-06-03 15:00", tz="UTC")
    first = load_news(settings, wh, QUOTA_SYMBOLS, "2024-01-02", "2024-02-28", page_limit=40, now=now)
    assert not first.complete and first.requests == 3 and len(sim.request_log) - before == 3
    assert "IBF_ALPHAVANTAGE_REQUESTS_PER_DAY" in first.note
    again = load_news(settings, wh, QUOTA_SYMBOLS, "2024-01-02", "2024-02-28", page_limit=40, now=now)
    assert again.requests == 0 and not again.complete
    days = 0
    while not (result := load_news(settings, wh, QUOTA_SYMBOLS, "2024-01-02", "2024-02-28", page_limit=40,
                                   now=now + pd.Timedelta(days=days + 1))).complete:
        days += 1
        assert days < 10
    assert result.complete


# ----- the API key never leaks -----------------------------------------------------------------------------
def test_api_key_never_in_errors_or_logs(sim, ibf_home, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    errors: list[BaseException] = []
    faults = [
        {"rate_limit_after": 0}, {"premium": True}, {"demo": True}, {"error_message": True}, {"malformed_json": 5},
        {"missing_feed": 5}, {"http_500": 9}, {"missing_fields": {"ticker_sentiment"}}, {"garbage_scores": True},
        {"burst_limits": 9}, {"reply_delay": 0.5},
    ]  # fmt: skip
    for fault in faults:
        sim.clear_faults()
        sim.reset_quota()
        sim.set_faults(**fault)
        client = client_for(sim, retries=1, timeout=0.2)
        try:
            load_news(news_settings(ibf_home, alphavantage_url=sim.url), Warehouse(ibf_home), ["AAPL"],
                      "2024-01-02", "2024-01-08", client=client)
        except Exception as exc:  # noqa: BLE001 - collecting them all
            errors.append(exc)
    sim.clear_faults()
    load_news(news_settings(ibf_home, alphavantage_url=sim.url), Warehouse(ibf_home), ["MSFT"], "2024-01-02", "2024-01-08")
    assert len(errors) == len(faults) - 2  # daily and burst rate limits are a clean stop, not an error
    for exc in errors:
        assert KEY not in str(exc) and KEY not in repr(exc) and KEY not in str(exc.__cause__ or "")
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx did log its requests ...
    for record in caplog.records:
        assert KEY not in record.getMessage()  # ... with the key redacted
    assert KEY not in repr(client_for(sim))


# ----- the VADER file path -----------------------------------------------------------------------------
CSV = """published_at,symbol,title,summary,url,source
2024-05-03 10:00:00,AAPL,"Apple reports great, excellent record earnings",,https://f.example/1,Wire
2024-05-03T19:30:00Z,AAPL,Apple faces lawsuit over terrible battery failures,Regulators are angry.,,
2024-05-03,MSFT,Microsoft and Apple announce a great partnership,,,Wire
2024-05-03,AAPL,Microsoft and Apple announce a great partnership,,,Wire
"""


def file_settings(home: Path, path: Path):
    return load_settings(home=home, news_source="file", news_file=path)


def test_file_path_scores_with_vader(tmp_path, ibf_home):
    path = tmp_path / "headlines.csv"
    path.write_text(CSV)
    articles, mentions = score_news_file(path)
    assert len(articles) == 3 and len(mentions) == 4  # the partnership headline: one article, two mentions
    expected = vader_scores(["Apple reports great, excellent record earnings",
                             "Apple faces lawsuit over terrible battery failures. Regulators are angry."])
    got = mentions.set_index(["symbol", "url"])["ticker_sentiment"]
    assert got[("AAPL", "https://f.example/1")] == pytest.approx(expected[0]) and expected[0] > 0.35
    second = mentions.iloc[1]
    assert second["ticker_sentiment"] == pytest.approx(expected[1]) and second["label"] == sentiment_label(expected[1])
    assert second["url"].startswith("urn:ibf:news:") and second["date"] == pd.Timestamp("2024-05-03")  # 15:30 ET
    assert mentions.iloc[0]["published_at"] == pd.Timestamp("2024-05-03 14:00", tz="UTC")  # 10:00 EDT
    partnership = mentions.iloc[2:]
    assert set(partnership["date"]) == {pd.Timestamp("2024-05-06")}  # bare date = after the close -> Monday
    assert (mentions["relevance"] == 1.0).all() and set(articles["origin"]) == {"file"}

    wh = Warehouse(ibf_home)
    result = load_news(file_settings(ibf_home, path), wh, ["AAPL", "MSFT"], "2024-05-01", "2024-05-31")
    assert result.articles == 3 and len(result.mentions) == 4
    first = lake_files(ibf_home)
    load_news(file_settings(ibf_home, path), wh, ["AAPL", "MSFT"], "2024-05-01", "2024-05-31")
    assert lake_files(ibf_home) == first
    # the file is the truth for its slice: a removed row disappears on the next load
    path.write_text("\n".join(CSV.splitlines()[:3]) + "\n")
    load_news(file_settings(ibf_home, path), wh, ["AAPL", "MSFT"], "2024-05-01", "2024-05-31")
    assert len(read_mentions(wh)) == 2
    daily = daily_news(wh, ["AAPL", "MSFT"], "2024-05-01", "2024-05-31")
    assert daily["news_count"].sum() == 2 and len(daily) == 2 * 22


def test_file_path_json_and_jsonl(tmp_path):
    records = [
        {"published_at": "2024-05-03T10:00:00-04:00", "symbol": "ibm", "title": "IBM wins a big contract"},
        {"published_at": "20240503T170000", "symbol": "IBM", "title": "IBM misses", "summary": None},
    ]
    as_json = tmp_path / "n.json"
    as_json.write_text(json.dumps({"articles": records}))
    as_jsonl = tmp_path / "n.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in records))
    a = score_news_file(as_json)[1]
    b = score_news_file(as_jsonl)[1]
    pd.testing.assert_frame_equal(a, b)
    assert list(a["symbol"]) == ["IBM", "IBM"]
    assert list(a["date"]) == [pd.Timestamp("2024-05-03"), pd.Timestamp("2024-05-06")]


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ("symbol,title\nAAPL,x\n", "n.csv", "missing column(s) published_at"),
        ("published_at,symbol,title\n2024-05-03 10:00,AAPL,ok\nyesterday,AAPL,x\n", "n.csv", "line 3: published_at 'yesterday'"),
        ("published_at,symbol,title\n2024-05-03 10:00,A B$,x\n", "n.csv", "line 2: symbol 'A B$' is not a valid symbol"),
        ("published_at,symbol,title\n2024-05-03 10:00,ZZZZ,x\n", "n.csv", "line 2: unknown symbol ZZZZ"),
        ("", "n.csv", "the file is empty"),
        ("published_at,symbol,title\n", "n.csv", "no rows"),
        ("published_at,symbol,title\n2024-05-03 10:00,AAPL,\n", "n.csv", "line 2: title is empty"),
        ("published_at,symbol,title,url\n2024-05-03,AAPL,x,u\n2024-05-03,AAPL,y,u\n", "n.csv", "line 3: repeats line 2"),
        ('[{"published_at": "2024-05-03", "symbol": "AAPL"}]', "n.json", "missing column(s) title"),
        ('[{"published_at": "2024-05-03", "symbol": "AAPL", "title": "x"}, 3]', "n.json", "record 2: is not an object"),
        ("[]", "n.json", "missing column(s)"),
        ("{not json", "n.json", "cannot read"),
        ("published_at,symbol,title\n2024-05-03,AAPL,a, b\n", "n.csv", "line 2: more fields than the header"),
        ("published_at,symbol,title\n2024-05-03,AAPL,a\n2024-05-03,AAPL,a,b\n", "n.csv", "line 3, saw 4"),
    ],
)
def test_bad_files_fail_whole_and_write_nothing(tmp_path, ibf_home, content, name, expected):
    path = tmp_path / name
    path.write_text(content)
    wh = Warehouse(ibf_home)
    with pytest.raises(NewsFileError) as info:
        load_news(file_settings(ibf_home, path), wh, ["AAPL"], "2024-05-01", "2024-05-31")
    assert str(path) in str(info.value) and expected in str(info.value)
    assert lake_files(ibf_home) == {}
