"""The daily-bar domain: the canonical bar frame (``bars``), the bar policy and its checks (``checks``), the recorded
repairs and gaps (``issues``), quality rules (``quality``) and loading a source into the warehouse (``ingest``)."""
