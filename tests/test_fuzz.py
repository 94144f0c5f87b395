"""Property-based fuzzing of every endpoint in /openapi.json (schemathesis): no 5xx, every error OpenAI-shaped.

Driven with hypothesis directly: schemathesis' pytest plugin does not run under this pytest.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.procs import Service

EXAMPLES = 40


@pytest.fixture(scope="session")
def fuzz_proxy(launch_proxy, null_upstream: Service) -> Service:
    return launch_proxy(null_upstream.url, SGP_MAX_NEW_TOKENS="4")


def _operations(url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    schema.config.update(base_url=url)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_endpoint_no_5xx_and_openai_errors(fuzz_proxy: Service, mode: GenerationMode) -> None:
    operations = _operations(fuzz_proxy.url)
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"}
    tried: list[int] = []
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.method.upper() == "POST":
            continue  # nothing to break in a GET without parameters

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_proxy.url, timeout=30)
            tried.append(response.status_code)
            assert response.status_code < 500, (case.body, response.status_code, response.text[:500])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}

        check()
    assert len(tried) >= EXAMPLES
    if mode is GenerationMode.NEGATIVE:
        assert tried.count(400) >= EXAMPLES  # the broken bodies really were broken, and said so
