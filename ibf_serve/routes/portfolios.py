"""The configured portfolios' stored backtests (tag ``portfolios``): names with their newest NAV, and one
portfolio's NAV series, current weights and metrics."""

from __future__ import annotations

import pandas as pd
from fastapi import APIRouter, Path, Request

from ibf_core.portfolio.spec import parse_portfolios
from ibf_core.portfolio.stored import newest_rows, portfolio_figures, stored_portfolios
from ibf_serve.errors import ApiError
from ibf_serve.routes.deps import AUTH, api_state
from ibf_serve.schemas import KEYED, PORTFOLIO_NAME_REGEX, PortfolioDetail, PortfolioList, error_responses

router = APIRouter(dependencies=AUTH, tags=["portfolios"])


def _strategies(settings) -> dict[str, dict]:
    return {name: spec.as_dict() for name, spec in parse_portfolios(settings.portfolios).items()}


@router.get("/portfolios", response_model=PortfolioList, responses=error_responses(*KEYED))
def portfolios(request: Request) -> dict:
    """Every configured portfolio (and any stored one no longer configured): strategy, newest session and NAV."""
    api = api_state(request)
    configured = _strategies(api.settings)
    newest = newest_rows(api.services.store).set_index("portfolio")
    names = sorted(set(configured) | set(newest.index))
    return {"portfolios": [{
        "name": name, "strategy": configured.get(name),
        "latest_date": pd.Timestamp(newest.at[name, "date"]).date() if name in newest.index else None,
        "nav": float(newest.at[name, "nav"]) if name in newest.index else None,
    } for name in names]}


@router.get("/portfolios/{name}", response_model=PortfolioDetail, responses=error_responses(*KEYED, 404, 422))
def portfolio(request: Request, name: str = Path(..., pattern=PORTFOLIO_NAME_REGEX, max_length=40,
                                                 description="A configured portfolio's name")) -> dict:
    """One portfolio: its NAV series (with drawdown), the current weights and the metrics of its stored sessions."""
    api = api_state(request)
    configured = _strategies(api.settings)
    store = api.services.store
    if name not in configured and name not in stored_portfolios(store):
        known = ", ".join(sorted(configured)) or "none"
        raise ApiError(404, f"portfolio {name!r} is not configured (IBF_PORTFOLIOS: {known})")
    figures = portfolio_figures(store, name, api.settings.benchmark)
    series = figures["series"]
    weights = figures["weights"].sort_values(["weight", "symbol"], ascending=[False, True])
    return {
        "name": name, "strategy": configured.get(name), "latest_date": figures["latest_date"], "nav": figures["nav"],
        "series": [{**row, "date": row["date"].date()} for row in series.drop(columns="portfolio").to_dict("records")],
        "weights": [{"symbol": r["symbol"], "weight": r["weight"], "target_weight": r["target_weight"],
                     "origin": pd.Timestamp(r["origin"]).date() if pd.notna(r["origin"]) else None, "reason": r["reason"]}
                    for r in weights.to_dict("records")],
        "metrics": figures["metrics"],
    }
