"""The catalog: every table and view ibf writes, gathered from the modules that declare them.

Storage (``ibf_core.storage``) must not import its users, so this module, outside storage, gathers them and
registers :func:`catalog` with ``ibf_core.storage.registry`` when ``ibf_core`` is imported. The declaring modules
are imported only when the catalog is asked for, so importing ``ibf_core`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibf_core.storage.registry import register_catalog

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.storage.tables import Catalog

# Heavy imports (duckdb, numpy, pandas, pyarrow) stay inside the functions that need them:
# importing this module loads none of them.


def catalog() -> Catalog:
    """The symbol x date tables, ``bar_issues``, ``features``, the news tables, ``alerts``, the live tables,
    ``microstructure_daily``, the fundamentals tables and the portfolio tables, then the views reading them."""
    from ibf_core.features.table import features_spec
    from ibf_core.fundamentals.store import FUNDAMENTALS_TABLES
    from ibf_core.market.issues import BAR_ISSUES
    from ibf_core.monitoring.alerts import ALERTS
    from ibf_core.monitoring.outcomes import FORECAST_OUTCOMES
    from ibf_core.news.store import NEWS_TABLES
    from ibf_core.portfolio.stored import PORTFOLIO_TABLES
    from ibf_core.storage.tables import TABLES, Catalog
    from ibf_core.streaming.microstructure import MICROSTRUCTURE_DAILY
    from ibf_core.streaming.tables import LIVE_TABLES

    return Catalog(
        tables=(*TABLES.values(), BAR_ISSUES, features_spec(), *NEWS_TABLES, ALERTS, *LIVE_TABLES,
                MICROSTRUCTURE_DAILY, *FUNDAMENTALS_TABLES, *PORTFOLIO_TABLES), views=(FORECAST_OUTCOMES,)
    )


register_catalog(catalog)
