"""Portfolios from forecasts: strategy specs (``spec``), target weights (``strategies``), IB costs (``costs``), the
honest backtest (``simulate``) and its metrics (``metrics``). Importing the package loads none of them."""
