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


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cutoff: dt.date | None = Field(None, description="Training cut-off session; default the newest session with features for every symbol")
