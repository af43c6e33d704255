"""Market-bar sources behind one interface (``BarSource``) and the factory that picks one from settings."""

from __future__ import annotations

from ibf_core.settings import Settings
from ibf_core.sources.base import BarSource

# Heavy imports (numpy) stay inside the functions that need them: importing this module loads none of them.


def make_source(settings: Settings) -> BarSource:
    """The source named by ``settings.source``."""
    if settings.source == "sample":
        from ibf_core.sources.sample import SampleSource

        return SampleSource()
    if settings.source == "csv":
        from ibf_core.market.checks import BarPolicy
        from ibf_core.sources.csv import CsvSource

        assert settings.csv_path is not None  # guaranteed by Settings validation
        return CsvSource(settings.csv_path, BarPolicy.from_settings(settings))
    from ibf_core.sources.ibkr.source import IbkrSource

    return IbkrSource.from_settings(settings)


__all__ = ["BarSource", "make_source"]
