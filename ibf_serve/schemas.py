"""Request bodies (validated by FastAPI; a bad value is a 422 naming it)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(..., min_length=1, description="Symbols to forecast (at most IBF_API_MAX_SYMBOLS)")
    horizons: list[int] = Field(default_factory=lambda: [1, 3, 5, 10, 15, 20], min_length=1, description="Sessions ahead: 1, 3, 5, 10, 15, 20")
    as_of: dt.date | None = Field(None, description="Origin session; default the newest stored (or, fresh, the newest with features)")
    fresh: bool = Field(False, description="Compute now from stored features with the registered models instead of reading stored predictions")
    live_price: bool = Field(False, description="During market hours express pred_price and the price interval against the newest streamed price (ibf stream): live x exp(r); each row names its price_basis, basis_price, basis_source, basis_time and basis_age_seconds")


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cutoff: dt.date | None = Field(None, description="Training cut-off session; default the newest session with features for every symbol")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Machine-readable error code (unauthorized, invalid_request, rate_limited, ...)")
    message: str = Field(..., description="What went wrong, naming the offending value; never a traceback, path or secret")


class ErrorBody(BaseModel):
    error: ErrorDetail


# Every operation may answer with these (declared in the OpenAPI document, so clients and schemathesis know them).
ERROR_RESPONSES = {status: {"model": ErrorBody, "description": text} for status, text in (
    (401, "No API key"), (403, "API key not accepted"), (404, "Not found"), (422, "Invalid request (names the value)"),
    (429, "Rate limit exceeded (see Retry-After)"), (500, "Internal error"), (503, "A part the request needs is unavailable"),
)}
