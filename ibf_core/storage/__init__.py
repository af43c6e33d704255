"""Warehouse storage: Parquet per (table, symbol) plus DuckDB views.

``atomic`` is the one way a file is replaced, ``tables`` declares tables and views, ``registry`` is where the
catalog (``ibf_core.catalog``, outside storage) registers them, ``warehouse`` reads, writes and defines views.
"""
