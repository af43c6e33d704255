"""Daily bars from Interactive Brokers (TWS / IB Gateway) through ib_insync: the source (``source.IbkrSource``), IB's
pacing rules (``pacing``), request planning (``planning``), the Parquet cache (``cache``), the connection on a
private event loop (``gateway``) and bar parsing (``parsing``)."""
