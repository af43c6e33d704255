"""The REST API tests' shared fixture: a running ``ibf serve`` app over the test module's own ``world``."""

import httpx
import pytest

from ibf_core.settings import get_settings


@pytest.fixture
def api(world):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    with running_server(create_app(get_settings())) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client
