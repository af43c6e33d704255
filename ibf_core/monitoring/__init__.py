"""Monitoring: matured forecasts and rolling performance (``outcomes``), drift tests (``drift``), drift scores and the
retrain decision (``scores``), incremental scoring of a rectangle (``rectangle``) and alert delivery (``alerts``)."""
