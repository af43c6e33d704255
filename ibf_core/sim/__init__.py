"""Loopback simulators that speak the real wire protocols, for the CLI and tests: the IB Gateway (``ib``: protocol,
historical data, live streams), Alpha Vantage (``alphavantage``), the intraday path a daily bar implies
(``intraday``) and the fault switchboard they share (``faults``). Product code never imports this package."""
