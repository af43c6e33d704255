"""The honest backtest: the planted return is earned net of the computed costs, an independent loop recomputes every
figure from the stored weights and bars, nothing after the decision time moves a weight, missing prices are held."""

import math

import numpy as np
import pandas as pd
import pytest

from helpers.portfolio import planted_panel
from ibf_core.calendar import trading_days
from ibf_core.portfolio.costs import CostModel
from ibf_core.portfolio.simulate import NO_PRICE_HELD, NO_PRICE_NOT_TRADED, Market, simulate
from ibf_core.portfolio.spec import Strategy
from ibf_core.portfolio.strategies import target_weights

SIGNAL, NOISE, K = 0.004, 0.01, 5


@pytest.fixture(scope="module")
def panel():
    return planted_panel(n_symbols=30, signal=SIGNAL, noise=NOISE)


def test_topk_earns_the_planted_return_minus_the_computed_costs(panel):
    bars, predictions, _ = panel
    sim = simulate(predictions, bars, Strategy(strategy="topk", k=K), CostModel(capital=1e6, slippage_bps=2.0))
    held = sim.returns.iloc[1:]  # the first session only buys
    # The mean noise of k names over T sessions has standard error NOISE / sqrt(k T); allow 4 of them (~5 bps).
    tolerance = 4 * NOISE / math.sqrt(K * len(held))
    assert abs(held["gross_return"].mean() - SIGNAL) < tolerance
    assert abs(held["net_return"].mean() - (SIGNAL - held["cost"].mean())) < tolerance
    assert sim.returns["nav"].iloc[-1] == pytest.approx(np.prod(1.0 + sim.returns["net_return"]))
    # The planted winners change every session, so the portfolio turns over; each traded dollar costs half the
    # 10 bps spread + 2 bps slippage + IB's commission (0.005 per share of USD 20-100+) + fees.
    per_dollar = held["cost"].sum() / held["turnover"].sum()
    assert 0.0007 < per_dollar < 0.0011
    assert held["turnover"].mean() > 1.0 and held["cost"].mean() > 0.0007


def test_long_short_earns_both_legs_and_stays_dollar_neutral(panel):
    bars, predictions, _ = panel
    sim = simulate(predictions, bars, Strategy(strategy="long_short", k=K), CostModel(capital=1e6))
    held = sim.returns.iloc[1:]
    tolerance = 4 * NOISE * math.sqrt(2) / math.sqrt(K * len(held))
    assert abs(held["gross_return"].mean() - 2 * SIGNAL) < tolerance  # 1 long the winners, 1 short the losers
    traded = sim.weights[sim.weights["reason"] == "rebalance"]
    net = traded.groupby("date")["weight"].sum()
    traded_exposure = sim.returns.loc[sim.returns["turnover"] > 0, "exposure"]  # drifting: exposure moves
    assert net.abs().max() < 1e-12 and (traded_exposure - 2.0).abs().max() < 1e-9


def test_a_forecast_of_the_trade_session_itself_earns_nothing():
    bars, predictions, _ = planted_panel(n_symbols=30, signal=SIGNAL, noise=NOISE, lead=1)
    sim = simulate(predictions, bars, Strategy(strategy="topk", k=K), CostModel(capital=1e6))
    held = sim.returns.iloc[1:]
    assert abs(held["gross_return"].mean()) < 4 * NOISE / math.sqrt(K * len(held))


def recompute(weights: pd.DataFrame, bars: pd.DataFrame, trade_days: set, capital: float, slippage_bps: float) -> pd.DataFrame:
    """gross, cost, net, turnover, nav, exposure from the stored weights and the bars alone (a plain loop)."""
    adj, close, spread = {}, {}, {}
    for row in bars.itertuples():
        key = (row.symbol, pd.Timestamp(row.date).date())
        adj[key], close[key], spread[key] = row.adj_close, row.close, row.spread
    dates = sorted(set(weights["date"]))
    stored = {d: dict(zip(g["symbol"], g["weight"])) for d, g in weights.groupby("date")}
    last = {}
    for (symbol, day), price in sorted(adj.items(), key=lambda item: item[0][1]):
        if day < dates[0]:
            last[symbol] = price
    all_days = sorted({day for _, day in adj})
    held, nav, out = {}, 1.0, []
    for day in [d for d in all_days if d >= dates[0]]:
        moves = {s: (adj[(s, day)] / last[s] - 1.0) if (s, day) in adj and s in last else 0.0 for s in held}
        gross = sum(w * moves[s] for s, w in held.items())
        drift = {s: w * (1.0 + moves[s]) / (1.0 + gross) for s, w in held.items()}
        for (symbol, when), price in adj.items():
            if when == day:
                last[symbol] = price
        today = stored.get(day, {})
        cost = turnover = 0.0
        if day in trade_days:
            nav_before = nav * (1.0 + gross)
            total = 0.0
            for symbol in set(drift) | set(today):
                change = today.get(symbol, 0.0) - drift.get(symbol, 0.0)
                if abs(change) < 1e-15:
                    continue
                value = abs(change) * capital * nav_before
                shares = value / close[(symbol, day)]
                commission = min(max(0.005 * shares, 1.00), 0.01 * value)
                fees = 0.000072 * shares + ((0.0000278 * value + min(0.000166 * shares, 8.30)) if change < 0 else 0.0)
                total += commission + fees + value * spread[(symbol, day)] / 2 + value * slippage_bps / 1e4
                turnover += abs(change)
            cost = total / (capital * nav)
        else:
            assert today == pytest.approx({s: w for s, w in drift.items() if w != 0}, abs=1e-12)
        nav *= 1.0 + gross - cost
        out.append((day, gross, cost, gross - cost, turnover, nav, sum(abs(w) for w in today.values())))
        held = {s: w for s, w in today.items() if w != 0}
    return pd.DataFrame(out, columns=["date", "gross_return", "cost", "net_return", "turnover", "nav", "exposure"])


@pytest.mark.parametrize(
    "spec",
    [
        Strategy(strategy="topk", k=4),
        Strategy(strategy="topk_dropout", k=5, n_drop=2, rebalance=5),
        Strategy(strategy="long_short", k=3, max_weight=0.3),
    ],
    ids=["topk", "topk_dropout_every_5", "long_short"],
)
def test_an_independent_loop_recomputes_gross_net_nav_from_the_stored_weights_and_bars(spec):
    bars, predictions, _ = planted_panel(n_symbols=12, end="2021-04-30", seed=3)
    rng = np.random.default_rng(1)
    bars["spread"] = rng.uniform(0.0005, 0.004, len(bars))
    days = sorted(bars["date"].unique())
    warm = simulate(predictions, bars, spec)
    # Take prices away: a held name for two sessions (one a trade session when rebalancing daily), another for one.
    gone_symbol = warm.weights[warm.weights["date"] == days[20].date()]["symbol"].iloc[0]
    gone = ((bars["symbol"] == gone_symbol) & bars["date"].isin(days[21:23])) | ((bars["symbol"] == "S007") & (bars["date"] == days[30]))
    bars = bars[~gone].reset_index(drop=True)
    model = CostModel(capital=50_000, slippage_bps=3.0)
    sim = simulate(predictions, bars, spec, model)
    origins = sorted(predictions["date"].unique())[:: spec.rebalance]
    trade_days = {days[days.index(o) + 1].date() for o in origins}
    expected = recompute(sim.weights, bars, trade_days, model.capital, model.slippage_bps)
    got = sim.returns.drop(columns="portfolio").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-13)
    reasons = set(sim.weights[sim.weights["symbol"] == gone_symbol]["reason"])
    assert reasons & {NO_PRICE_HELD, NO_PRICE_NOT_TRADED}
    assert set(sim.events["event"]) <= {NO_PRICE_HELD, NO_PRICE_NOT_TRADED}
    assert (sim.events["symbol"] == gone_symbol).any()


def scramble(bars: pd.DataFrame, predictions: pd.DataFrame, after, seed: int = 9):
    """Every price, volume, spread and forecast dated after ``after`` replaced by noise."""
    rng = np.random.default_rng(seed)
    bars, predictions = bars.copy(), predictions.copy()
    late = bars["date"] > after
    for column in ("open", "high", "low", "close", "adj_close"):
        bars.loc[late, column] = bars.loc[late, column] * rng.uniform(0.5, 1.5, late.sum())
    bars.loc[late, "volume"] = bars.loc[late, "volume"] * rng.uniform(0.0, 20.0, late.sum())
    bars.loc[late, "spread"] = rng.uniform(0.0, 0.05, late.sum())
    later = predictions["date"] > after
    for column in ("pred_return", "rank_score"):
        predictions.loc[later, column] = rng.permutation(predictions.loc[later, column].to_numpy())
    return bars, predictions


@pytest.mark.parametrize(
    "spec",
    [
        Strategy(strategy="topk_dropout", k=4, n_drop=1, turnover_cap=0.6, min_dollar_volume=1.5e7, sector_neutral=True),
        Strategy(strategy="long_short", k=3, max_weight=0.4, sector_neutral=True),
        Strategy(strategy="topk", k=3, rebalance=3),
        Strategy(strategy="topk", k=3, min_dollar_volume=2.2e7),  # about half the names trade less
    ],
    ids=["topk_dropout_options", "long_short_sector_neutral", "topk_every_3", "topk_liquid"],
)
def test_scrambling_everything_after_a_date_moves_no_weight_dated_up_to_the_next_session(spec):
    bars, predictions, _ = planted_panel(n_symbols=16, end="2021-04-30", seed=5)
    sectors = {s: i % 3 for i, s in enumerate(sorted(bars["symbol"].unique()))}
    days = sorted(bars["date"].unique())
    # The cut is a rebalance origin, so the next session trades: its weights are decisions. (Between trades the
    # weights dated a session are the holdings drifted to its close, valued at that close by definition.)
    at = 40 - 40 % spec.rebalance
    cut, trade = days[at], days[at + 1]
    honest = simulate(predictions, bars, spec, sectors=sectors)
    late_bars, late_predictions = scramble(bars, predictions, cut)
    noisy = simulate(late_predictions, late_bars, spec, sectors=sectors)
    early = lambda frame, day: frame[frame["date"] <= day.date()].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(early(honest.weights, trade), early(noisy.weights, trade))
    pd.testing.assert_frame_equal(early(honest.returns, cut), early(noisy.returns, cut))
    assert not early(honest.weights, days[-1]).equals(early(noisy.weights, days[-1]))  # the scramble did bite


def test_topk_dropout_replaces_at_most_n_drop_names_per_rebalance(panel):
    bars, predictions, _ = panel
    spec = Strategy(strategy="topk_dropout", k=6, n_drop=2)
    sim = simulate(predictions, bars, spec)
    held = sim.weights[sim.weights["weight"] > 0].groupby("date")["symbol"].apply(set)
    new_names = [len(today - before) for before, today in zip(held.iloc[:-1], held.iloc[1:])]
    assert max(new_names) == 2 and all(len(names) == 6 for names in held)
    assert sim.returns["turnover"].iloc[1:].max() < 2 * 2 / 6 + 0.05  # ~n_drop / k per side, plus drift


def test_the_newest_origin_gives_the_pending_targets():
    bars, predictions, _ = planted_panel(n_symbols=8, end="2021-03-31")
    last = bars["date"].max()
    newest = predictions[predictions["date"] == predictions["date"].max()].assign(date=last)
    spec = Strategy(strategy="topk", k=2)
    sim = simulate(pd.concat([predictions, newest]), bars, spec)
    pd.testing.assert_series_equal(sim.pending, target_weights(newest, spec, None))
    assert sim.returns["date"].iloc[-1] == last.date()
    with pytest.raises(ValueError, match="horizon 5"):
        simulate(predictions, bars, Strategy(strategy="topk", k=2, horizon=5))


def test_a_market_read_once_gives_the_same_backtest_as_the_bars(panel):
    bars, predictions, _ = panel
    spec = Strategy.parse({"strategy": "topk_dropout", "k": 4, "n_drop": 1}, "dropout")
    direct = simulate(predictions, bars, spec, portfolio="p")
    market = Market.of(bars, trading_days(predictions["date"].min(), pd.Timestamp(bars["date"].max()).date()))
    reused = simulate(predictions, None, spec, portfolio="p", market=market)
    pd.testing.assert_frame_equal(direct.returns, reused.returns)
    pd.testing.assert_frame_equal(direct.weights, reused.weights)
    assert len(reused.returns) > 200
    with pytest.raises(ValueError, match="predictions for symbols without bars: ZZZ"):
        simulate(predictions.assign(symbol="ZZZ"), None, spec, market=market)
