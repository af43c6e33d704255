"""Warehouse storage: Parquet per (table, symbol) plus DuckDB views."""
