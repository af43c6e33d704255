"""``IBF_FUNDAMENTALS_SOURCE=sample``: the real classification of the embedded sample symbols, nothing invented.

Sector and industry are written the way Alpha Vantage's ``OVERVIEW`` names them, which follows the companies' SEC
SIC codes: AAPL 3571, MSFT 7372, IBM 3570, GOOG and FB 7370. The snapshot fields (shares outstanding, analyst
target and ratings) are NaN: we have no recording of them for the sample's years, and the sample has no earnings or
macro history (the loaders record that as issues instead of making numbers up).
"""

from __future__ import annotations

SAMPLE_SOURCE_NOTE = "the embedded sample has no {what} history"
SIC_INDUSTRY = {
    3570: "COMPUTER & OFFICE EQUIPMENT",
    3571: "ELECTRONIC COMPUTERS",
    7370: "SERVICES-COMPUTER PROGRAMMING, DATA PROCESSING, ETC.",
    7372: "SERVICES-PREPACKAGED SOFTWARE",
}
# symbol: (name, exchange, SIC code)
_COMPANIES = {
    "AAPL": ("Apple Inc", "NASDAQ", 3571),
    "FB": ("Facebook Inc (Meta Platforms Inc since 2021)", "NASDAQ", 7370),
    "GOOG": ("Alphabet Inc Class C", "NASDAQ", 7370),
    "IBM": ("International Business Machines", "NYSE", 3570),
    "MSFT": ("Microsoft Corporation", "NASDAQ", 7372),
}


def sample_overview(symbol: str) -> dict[str, str] | None:
    """The sample's classification of ``symbol`` (no date, no snapshot fields); None when it is not in the sample."""
    if symbol not in _COMPANIES:
        return None
    name, exchange, sic = _COMPANIES[symbol]
    return {"symbol": symbol, "asset_type": "Common Stock", "exchange": exchange, "sector": "TECHNOLOGY",
            "industry": SIC_INDUSTRY[sic], "name": name}  # fmt: skip
