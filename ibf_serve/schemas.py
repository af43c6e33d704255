"""Request bodies and parameter types (validated by FastAPI; a bad value is a 422 naming it).

The OpenAPI document is the contract: every constraint the server enforces is declared here (the horizons' enum,
the symbol pattern and list limits, strict ``format: date`` / ``date-time`` values), and every value the document
allows is accepted (a well-formed symbol that is not served is a declared 404, not a 422)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ibf_core.models import HORIZONS

# What a client may send as a symbol: SYMBOL_PATTERN (ibf_core.settings) in either case; it is upper-cased.
SYMBOL_REGEX = r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,15}$"
_SYMBOL = re.compile(SYMBOL_REGEX.rstrip("$") + r"\Z")
SYMBOL_SCHEMA: dict[str, Any] = {"type": "string", "pattern": SYMBOL_REGEX, "minLength": 1, "maxLength": 16}
HORIZON_SCHEMA: dict[str, Any] = {"type": "integer", "enum": list(HORIZONS)}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
# RFC 3339 (JSON Schema's date-time): seconds and an offset are required.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})\Z")


def symbol_ok(raw: str) -> bool:
    return bool(_SYMBOL.match(raw))


def _iso_date(value: Any) -> Any:
    """``YYYY-MM-DD`` only (pydantic alone would take ``0`` or ``20210104`` as a date)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _DATE.match(value):
        raise ValueError("use a date YYYY-MM-DD")
    return dt.date.fromisoformat(value)


def _rfc3339(value: Any) -> Any:
    """An RFC 3339 date-time (offset required) or a date YYYY-MM-DD (midnight UTC); pydantic alone would take
    ``0.5`` as a Unix time."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and _DATE.match(value):
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.timezone.utc)
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("use an RFC 3339 date-time (2021-03-02T00:00:00Z) or a date YYYY-MM-DD")
    return dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))


StrictDate = Annotated[dt.date, BeforeValidator(_iso_date)]
# Declared as date-time or date: both are accepted.
DateOrDateTime = Annotated[dt.datetime, BeforeValidator(_rfc3339), WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]})]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # maxItems: IBF_API_MAX_SYMBOLS, set in the document by create_app (the server refuses more with a 422).
    symbols: list[str] = Field(..., min_length=1, description="Symbols to forecast (at most IBF_API_MAX_SYMBOLS); "
                               "one that is well formed but not served is a 404", json_schema_extra={"items": SYMBOL_SCHEMA})
    horizons: list[int] = Field(default_factory=lambda: list(HORIZONS), min_length=1, description="Sessions ahead: 1, 3, 5, 10, 15, 20",
                                json_schema_extra={"items": HORIZON_SCHEMA})
    as_of: StrictDate | None = Field(None, description="Origin session; default the newest stored (or, fresh, the newest with features)")
    fresh: bool = Field(False, description="Compute now from stored features with the registered models instead of reading stored predictions")
    live_price: bool = Field(False, description="During market hours express pred_price and the price interval against the newest streamed price (ibf stream): live x exp(r); each row names its price_basis, basis_price, basis_source, basis_time and basis_age_seconds")


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cutoff: StrictDate | None = Field(None, description="Training cut-off session; default the newest session with features for every "
                                      "symbol; one that is not a session with features is a 404")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Machine-readable error code (unauthorized, invalid_request, rate_limited, ...)")
    message: str = Field(..., description="What went wrong, naming the offending value; never a traceback, path or secret")


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERROR_TEXT = {
    400: "The body is not JSON", 401: "No API key", 403: "API key not accepted", 404: "Not found", 422: "Invalid request (names the value)",
    429: "Rate limit exceeded (see Retry-After)", 500: "Internal error", 503: "A part the request needs is unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers one operation can give (plus 500), declared with the error body."""
    return {status: {"model": ErrorBody, "description": _ERROR_TEXT[status]} for status in sorted({*statuses, 500})}


# What the key check can answer (401, 403, then the rate limit) and the warehouse check (503).
KEYED = (401, 403, 429, 503)


# ----- portfolios (responses) -----------------------------------------------------------------------------------
PORTFOLIO_NAME_REGEX = r"^[a-z][a-z0-9_-]{0,39}$"  # ibf_core.portfolio.spec.PORTFOLIO_NAME


class PortfolioSummary(BaseModel):
    name: str = Field(..., description="Portfolio name (a key of IBF_PORTFOLIOS)")
    strategy: dict[str, Any] | None = Field(..., description="Strategy and every parameter, defaults resolved; null for "
                                            "a stored portfolio that is no longer configured")
    latest_date: dt.date | None = Field(..., description="Newest session of portfolio_returns; null before the first materialization")
    nav: float | None = Field(..., description="NAV on latest_date (1.0 at the start)")


class PortfolioList(BaseModel):
    portfolios: list[PortfolioSummary]


class NavPoint(BaseModel):
    date: dt.date
    nav: float
    gross_return: float
    cost: float = Field(..., description="Trading costs as a fraction of the previous NAV")
    net_return: float
    turnover: float
    exposure: float = Field(..., description="Sum |weight| after the session")
    drawdown: float = Field(..., description="NAV / its running peak (the start at 1.0 counts) - 1")


class Holding(BaseModel):
    symbol: str
    weight: float = Field(..., description="Fraction of NAV after latest_date's close (negative: short)")
    target_weight: float
    origin: dt.date | None = Field(..., description="Origin of the predictions behind the newest rebalance")
    reason: str


class PortfolioDetail(PortfolioSummary):
    series: list[NavPoint] = Field(..., description="Every stored session, oldest first")
    weights: list[Holding] = Field(..., description="The non-zero weights on latest_date, largest first")
    metrics: dict[str, float | int | None] = Field(..., description="ibf_core.portfolio.metrics.portfolio_metrics over the "
                                                   "stored sessions (docs/portfolios.md#metrics); null where not computable")
