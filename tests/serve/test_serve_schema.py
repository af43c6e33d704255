"""Schemathesis: generated requests for every operation of the OpenAPI document against a live server."""

from __future__ import annotations

import hashlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable

from ibf_core.settings import get_settings

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def api_schema(ibf_home, monkeypatch):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server, write_stored_world

    monkeypatch.setenv("IBF_UNIVERSE", "AAA,BBB")
    monkeypatch.setenv("IBF_API_KEYS", hashlib.sha256(KEY.encode()).hexdigest())
    monkeypatch.setenv("IBF_API_RATE_LIMIT", "0")
    monkeypatch.setenv("IBF_DAGSTER_URL", "http://127.0.0.1:9")  # nothing listens: /retrain answers 503, never 500
    get_settings.cache_clear()
    write_stored_world(ibf_home, ["AAA", "BBB"], "2021-01-04", "2021-02-26")
    with running_server(create_app(get_settings())) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        # 503 is a declared answer (no model for fresh or /ready, no webserver for /retrain): not a server error.
        schema.config.checks.not_a_server_error.expected_statuses = ["2xx", "3xx", "4xx", "503"]
        yield schema


CALLS: list[tuple[str, int]] = []


def _check(case) -> None:
    response = case.call(headers=AUTH, timeout=60)
    CALLS.append((f"{case.method} {case.path}", response.status_code))
    # 503 is a documented answer (no model for fresh, no webserver for /retrain, not ready); 500 is a bug.
    assert response.status_code != 500, (case.method, case.formatted_path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"code", "message"}  # /ready adds its per-part checks beside it
        assert "Traceback" not in response.text
    # Every check: the document is the contract (schema-valid requests are accepted or a declared 404,
    # schema-invalid ones refused, every answer declared).
    case.validate_response(response)


@pytest.mark.slow
def test_generated_requests_get_documented_answers(api_schema):
    """Every operation, 20 schema-valid and 10 schema-invalid generated requests each (schemathesis strategies
    driven by hypothesis directly: schemathesis' pytest plugin does not load under this pytest), every check."""
    from hypothesis import given
    from schemathesis import GenerationMode

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 15  # every route listed in docs/api.md
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, 20), (GenerationMode.NEGATIVE, 10)):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                _check(case)

            try:
                run()
            except Unsatisfiable:  # an operation with no parameters and no body has no invalid request
                assert mode is GenerationMode.NEGATIVE, operation.label
    per_operation = {op: sum(1 for o, _ in CALLS if o == op) for op in {o for o, _ in CALLS}}
    assert len(per_operation) == 15 and min(per_operation.values()) >= 1, per_operation
    assert any(status == 200 for _, status in CALLS) and any(status == 422 for _, status in CALLS)
