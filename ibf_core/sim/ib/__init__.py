"""The IB Gateway simulator: wire messages and replies (``protocol``), the server and historical data (``gateway``),
real-time bars, quotes, ticks and depth (``live``)."""
