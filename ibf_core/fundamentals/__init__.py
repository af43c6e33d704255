"""Company fundamentals, earnings and macro series from Alpha Vantage, stored point in time.

Entry points in ``load`` (what the Dagster assets call):

- ``load_fundamentals(settings, store, symbols, now=None)``: per symbol ``OVERVIEW`` (a snapshot for the recording
  session) and ``EARNINGS``, plus one ``EARNINGS_CALENDAR`` request for all of them (2 x symbols + 1 requests).
- ``load_macro(settings, store, now=None)``: every indicator of ``MACRO_INDICATORS`` (6 requests).
- ``read_inputs(store, symbols, start=None, end=None)``: the stored values as ``FundamentalInputs``.

``settings.fundamentals_source``: ``alphavantage`` (the news key, URL and daily quota: both count against the same
``alphavantage_requests_per_day``), ``sample`` (the real classification of the sample symbols, no snapshot values,
no earnings or macro - recorded as issues, never invented) or ``none``.

Bad input never crashes a load: a symbol Alpha Vantage does not cover or an ETF (``{}``), a premium endpoint or the
demo key (``NotEntitledError``), a missing value or an undatable row is recorded in ``fundamentals_issues`` and
skipped. A daily rate limit (or our own budget) stops the load: what was fetched completely is written and the
result names what remains (``complete=False``). Any other error (a malformed body, HTTP 5xx after the retries, a
bad call) raises and writes nothing: every load is one transaction.
"""
