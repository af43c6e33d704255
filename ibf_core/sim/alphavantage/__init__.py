"""The Alpha Vantage simulator: what it serves (``content``) and the HTTP server with its faults (``server``)."""
