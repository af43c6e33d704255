"""What the Alpha Vantage simulator serves: articles, synthetic feeds, fundamentals and macro series."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ibf_core.news.feed import sentiment_label


class SimulatorError(RuntimeError):
    """The simulator could not start or was misused."""


SENTIMENT_DEFINITION = (
    "x <= -0.35: Bearish; -0.35 < x <= -0.15: Somewhat-Bearish; -0.15 < x < 0.15: Neutral; "
    "0.15 <= x < 0.35: Somewhat_Bullish; x >= 0.35: Bullish"
)
RELEVANCE_DEFINITION = "0 < x <= 1, with a higher score indicating higher relevance."


# ----- articles -------------------------------------------------------------------------------------
def make_article(
    url: str,
    published: str | dt.datetime,
    tickers: Mapping[str, tuple[float, float]] | Sequence[str],
    *,
    title: str | None = None,
    summary: str = "",
    source: str = "Simulated Wire",
    overall: float | None = None,
    topics: Sequence[tuple[str, float]] = (),
) -> dict[str, Any]:
    """An article in AV's JSON shape; ``tickers`` maps symbol -> (relevance, sentiment) (or lists symbols: 0.5, 0.0).

    ``published`` is AV's ``YYYYMMDDTHHMMSS`` (US/Eastern) or a datetime (naive = US/Eastern).
    """
    if isinstance(published, dt.datetime):
        if published.tzinfo is not None:
            published = published.astimezone(ZoneInfo("America/New_York"))
        published = published.strftime("%Y%m%dT%H%M%S")
    pairs = dict(tickers) if isinstance(tickers, Mapping) else {t: (0.5, 0.0) for t in tickers}
    scores = [s for _, s in pairs.values()]
    overall = round(sum(scores) / len(scores), 6) if overall is None and scores else (overall or 0.0)
    return {
        "title": title or f"Simulated headline {url.rsplit('/', 1)[-1]}",
        "url": url,
        "time_published": published,
        "authors": ["ibf simulator"],
        "summary": summary,
        "banner_image": None,
        "source": source,
        "category_within_source": "n/a",
        "source_domain": "sim.example",
        "topics": [{"topic": t, "relevance_score": f"{r:.6f}"} for t, r in topics],
        "overall_sentiment_score": overall,
        "overall_sentiment_label": sentiment_label(overall),
        "ticker_sentiment": [
            {
                "ticker": symbol,
                "relevance_score": f"{rel:.6f}",
                "ticker_sentiment_score": f"{score:.6f}",
                "ticker_sentiment_label": sentiment_label(score),
            }
            for symbol, (rel, score) in pairs.items()
        ],
    }


def synthetic_feed(
    symbols: Sequence[str] = ("AAPL", "GOOG", "IBM", "MSFT"),
    start: str | dt.date = "2024-01-02",
    end: str | dt.date = "2024-03-28",
    per_day: float = 3.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A deterministic feed: about ``per_day`` articles per symbol and calendar day, some naming two symbols."""
    start_d = dt.date.fromisoformat(str(start))
    end_d = dt.date.fromisoformat(str(end))
    rng = random.Random(seed)
    feed = []
    day = start_d
    while day <= end_d:
        for symbol in symbols:
            for i in range(int(per_day) + (rng.random() < per_day % 1)):
                stamp = dt.datetime.combine(day, dt.time(rng.randrange(24), rng.randrange(60), rng.randrange(60)))
                tickers = {symbol: (round(rng.uniform(0.1, 1.0), 6), round(rng.uniform(-0.6, 0.6), 6))}
                if rng.random() < 0.2 and len(symbols) > 1:
                    other = rng.choice([s for s in symbols if s != symbol])
                    tickers[other] = (round(rng.uniform(0.1, 0.5), 6), round(rng.uniform(-0.6, 0.6), 6))
                url = f"https://sim.example/news/{day:%Y%m%d}-{symbol}-{i}"
                feed.append(make_article(url, stamp, tickers))
        day += dt.timedelta(days=1)
    return feed


# ----- fundamentals, earnings and macro (synthetic) ---------------------------------------------------
FUNCTIONS = frozenset({
    "NEWS_SENTIMENT", "OVERVIEW", "EARNINGS", "EARNINGS_CALENDAR", "TREASURY_YIELD", "FEDERAL_FUNDS_RATE", "CPI",
    "UNEMPLOYMENT",
})  # fmt: skip
MACRO_FUNCTIONS = ("TREASURY_YIELD", "FEDERAL_FUNDS_RATE", "CPI", "UNEMPLOYMENT")
CALENDAR_FIELDS = ("symbol", "name", "reportDate", "fiscalDateEnding", "estimate", "currency")
ETF_SYMBOLS = frozenset({"SPY", "QQQ", "IWM"})
_SYNTHETIC_COMPANIES = {  # symbol: (name, exchange, sector, industry) - invented figures follow, not market data
    "AAPL": ("Apple Inc", "NASDAQ", "TECHNOLOGY", "ELECTRONIC COMPUTERS"),
    "GOOG": ("Alphabet Inc Class C", "NASDAQ", "TECHNOLOGY", "SERVICES-COMPUTER PROGRAMMING, DATA PROCESSING, ETC."),
    "IBM": ("International Business Machines", "NYSE", "TECHNOLOGY", "COMPUTER & OFFICE EQUIPMENT"),
    "MSFT": ("Microsoft Corporation", "NASDAQ", "TECHNOLOGY", "SERVICES-PREPACKAGED SOFTWARE"),
}
_MACRO_SERIES = {  # key: (name, interval, unit, first value, drift, step sd, decimals) of the synthetic walks
    "TREASURY_YIELD:3month": ("3-Month Treasury Constant Maturity Rate", "daily", "percent", 4.60, 0.0, 0.02, 2),
    "TREASURY_YIELD:2year": ("2-Year Treasury Constant Maturity Rate", "daily", "percent", 4.30, 0.0, 0.03, 2),
    "TREASURY_YIELD:10year": ("10-Year Treasury Constant Maturity Rate", "daily", "percent", 3.90, 0.0, 0.03, 2),
    "FEDERAL_FUNDS_RATE": ("Effective Federal Funds Rate", "daily", "percent", 5.33, 0.0, 0.005, 2),
    "CPI": ("Consumer Price Index for all Urban Consumers", "monthly", "index 1982-1984=100", 300.0, 0.7, 0.4, 3),
    "UNEMPLOYMENT": ("Unemployment Rate", "monthly", "percent", 3.7, 0.0, 0.1, 1),
}


def macro_key(function: str, params: Mapping[str, str]) -> str:
    """The ``fundamentals["macro"]`` key of a request: ``TREASURY_YIELD:<maturity>`` (default 10year) or the function."""
    if function == "TREASURY_YIELD":
        return f"TREASURY_YIELD:{params.get('maturity', '10year')}"
    return function


def check_fundamentals(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fundamentals data with every part present, symbols upper-case; ValueError names a wrong part."""
    if not isinstance(data, Mapping):
        raise ValueError("fundamentals must be an object with overview, earnings, calendar and macro")
    out = {"overview": {}, "earnings": {}, "calendar": [], "macro": {}}
    unknown = sorted(set(data) - set(out))
    if unknown:
        raise ValueError(f"unknown fundamentals part(s) {', '.join(unknown)}")
    for part in ("overview", "earnings", "macro"):
        value = data.get(part, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise ValueError(f"fundamentals[{part!r}] must map a name to an object")
        out[part] = {(k if part == "macro" else k.upper()): dict(v) for k, v in value.items()}
    for key, body in out["macro"].items():
        if not isinstance(body.get("data"), list):
            raise ValueError(f"fundamentals['macro'][{key!r}] has no 'data' list")
    rows = data.get("calendar", [])
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) and r.get("symbol") for r in rows):
        raise ValueError("fundamentals['calendar'] must be a list of rows with a symbol")
    out["calendar"] = [{f: str(r.get(f, "") or "") for f in CALENDAR_FIELDS} | {"symbol": str(r["symbol"]).upper()}
                       for r in rows]  # fmt: skip
    return out


def calendar_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CALENDAR_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _quarter_ends(start: dt.date, end: dt.date) -> list[dt.date]:
    """Calendar quarter ends from the one before ``start`` through the first after ``end``."""
    year, quarter = start.year, (start.month - 1) // 3  # the quarter before start's
    out = []
    while True:
        if quarter == 0:
            year, quarter = year - 1, 4
        month = 3 * quarter
        last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1))
        out.append(last)
        if last > end:
            return out
        year, quarter = (year + 1, 1) if quarter == 4 else (year, quarter + 1)


def synthetic_fundamentals(
    symbols: Sequence[str] = ("AAPL", "GOOG", "IBM", "MSFT", "SPY"),
    start: str | dt.date = "2022-01-03",
    end: str | dt.date = "2024-06-28",
    seed: int = 0,
) -> dict[str, Any]:
    """SYNTHETIC fundamentals in Alpha Vantage's shapes (random walks, not market data), deterministic per seed.

    Per company: an overview (real classification for AAPL, GOOG, IBM, MSFT, invented snapshot numbers), quarterly
    earnings reported 25-40 days after each calendar quarter end up to ``end`` (pre- or post-market at random, EPS a
    random walk, estimates near it) and the next quarter's announcement in the calendar. SPY, QQQ and IWM are ETFs:
    no overview (``{}``) and empty earnings lists. Macro: daily treasury yields (3month, 2year, 10year) and fed
    funds on every weekday, a monthly CPI index and unemployment rate, newest first like Alpha Vantage.
    """
    lo, hi = dt.date.fromisoformat(str(start)), dt.date.fromisoformat(str(end))
    rng = random.Random(seed)
    overview: dict[str, Any] = {}
    earnings: dict[str, Any] = {}
    calendar: list[dict[str, str]] = []
    for symbol in (s.upper() for s in symbols):
        if symbol in ETF_SYMBOLS:
            earnings[symbol] = {"symbol": symbol, "annualEarnings": [], "quarterlyEarnings": []}
            continue
        name, exchange, sector, industry = _SYNTHETIC_COMPANIES.get(
            symbol, (f"{symbol} Synthetic Corp", "NYSE", "TECHNOLOGY", "SERVICES-PREPACKAGED SOFTWARE")
        )
        ratings = [rng.randrange(0, 25) for _ in range(5)]
        overview[symbol] = {
            "Symbol": symbol, "AssetType": "Common Stock", "Name": name,
            "Description": "Synthetic overview served by the ibf Alpha Vantage simulator.", "CIK": "0",
            "Exchange": exchange, "Currency": "USD", "Country": "USA", "Sector": sector, "Industry": industry,
            "FiscalYearEnd": "December", "LatestQuarter": str(_quarter_ends(lo, hi)[-2]),
            "SharesOutstanding": str(rng.randrange(500_000_000, 15_000_000_000)),
            "AnalystTargetPrice": f"{rng.uniform(50, 500):.2f}",
            "AnalystRatingStrongBuy": str(ratings[0]), "AnalystRatingBuy": str(ratings[1]),
            "AnalystRatingHold": str(ratings[2]), "AnalystRatingSell": str(ratings[3] // 5),
            "AnalystRatingStrongSell": str(ratings[4] // 10),
        }  # fmt: skip
        eps, quarterly = rng.uniform(0.8, 3.0), []
        for quarter_end in _quarter_ends(lo, hi):
            reported = quarter_end + dt.timedelta(days=rng.randint(25, 40))
            reported += dt.timedelta(days=max(0, 7 - reported.weekday()) if reported.weekday() >= 5 else 0)
            eps = max(0.05, eps + rng.gauss(0.02, 0.12))
            estimate = round(eps + rng.gauss(0, 0.08), 2)
            if reported > hi:
                calendar.append({"symbol": symbol, "name": name, "reportDate": str(reported),
                                 "fiscalDateEnding": str(quarter_end), "estimate": f"{estimate:.2f}", "currency": "USD"})
                break
            actual = round(eps, 2)
            surprise = round(actual - estimate, 4)
            quarterly.append({
                "fiscalDateEnding": str(quarter_end), "reportedDate": str(reported), "reportedEPS": f"{actual:.2f}",
                "estimatedEPS": f"{estimate:.2f}", "surprise": f"{surprise:.4f}",
                "surprisePercentage": f"{100 * surprise / abs(estimate):.4f}" if estimate else "None",
                "reportTime": rng.choice(("pre-market", "post-market")),
            })  # fmt: skip
        years: dict[str, list[float]] = {}
        for row in quarterly:
            years.setdefault(row["fiscalDateEnding"][:4], []).append(float(row["reportedEPS"]))
        annual = [{"fiscalDateEnding": f"{y}-12-31", "reportedEPS": f"{sum(v):.2f}"}
                  for y, v in sorted(years.items(), reverse=True) if len(v) == 4]  # fmt: skip
        earnings[symbol] = {"symbol": symbol, "annualEarnings": annual, "quarterlyEarnings": quarterly[::-1]}
    return {"overview": overview, "earnings": earnings, "calendar": calendar, "macro": _synthetic_macro(lo, hi, rng)}


def _synthetic_macro(lo: dt.date, hi: dt.date, rng: random.Random) -> dict[str, Any]:
    """Random-walk macro series (SYNTHETIC) from ``lo`` to ``hi``, newest first."""
    weekdays = [lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)]
    weekdays = [d for d in weekdays if d.weekday() < 5]
    months = sorted({d.replace(day=1) for d in weekdays})
    out = {}
    for key, (name, interval, unit, value, drift, step, decimals) in _MACRO_SERIES.items():
        data = []
        for day in weekdays if interval == "daily" else months:
            value = max(0.01, value + rng.gauss(drift, step))
            data.append({"date": str(day), "value": f"{value:.{decimals}f}"})
        out[key] = {"name": name, "interval": interval, "unit": unit, "data": data[::-1]}
    return out


def minute_text(text: str) -> str:
    """AV's ``YYYYMMDDTHHMM`` (seconds allowed, ignored) as a comparable string."""
    value = text.strip()
    dt.datetime.strptime(value[:13], "%Y%m%dT%H%M")  # raises ValueError when malformed
    if len(value) not in (13, 15):
        raise ValueError(f"time {text!r}")
    return value[:13]


def relevance(article: Mapping[str, Any], tickers: list[str]) -> float:
    values = [float(t["relevance_score"]) for t in article["ticker_sentiment"] if t["ticker"].upper() in tickers]
    return max(values, default=0.0)


def load_articles(path: str) -> list[dict[str, Any]]:
    """Articles for ``serve`` from a JSON file: a list of AV articles or an AV response with a ``feed``."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    feed = data.get("feed") if isinstance(data, dict) else data
    if not isinstance(feed, list):
        raise SimulatorError(f"{path}: expected a list of articles or an object with 'feed'")
    return feed


def load_fundamentals_file(path: str) -> dict[str, Any]:
    """Fundamentals data for ``serve`` from a JSON file of the constructor's ``fundamentals`` shape."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    try:
        return check_fundamentals(data)
    except ValueError as exc:
        raise SimulatorError(f"{path}: {exc}") from None
