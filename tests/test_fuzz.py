"""Property-based fuzzing of every endpoint in /openapi.json (schemathesis): no 5xx, every error OpenAI-shaped.

Driven with hypothesis directly: schemathesis' pytest plugin does not run under this pytest.
"""

from __future__ import annotations

import json

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

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_proxy.url, timeout=30)
            tried.append(response.status_code)
            assert response.status_code < 500, (case.body, response.status_code, response.text[:500])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}

        check()
    print(f"\nschemathesis {mode.name.lower()}: {len(tried)} inputs, statuses {sorted(set(tried))}, no 5xx")
    assert len(tried) >= EXAMPLES
    if mode is GenerationMode.NEGATIVE:
        assert tried.count(400) >= EXAMPLES  # the broken bodies really were broken, and said so


# ---- issue #16: hostile inputs the schema does not describe --------------------------------------

HARDENING_EXAMPLES = 500
PATHS = ["/v1/chat/completions", "/v1/completions"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "application/vnd.api+json",
]
SURROGATES = ["\\ud800", "\\udfff", "\\uDBFF\\u0041", "\\ud83d\\ude00", "\\u0000"]


def _hostile_case():
    """One request: a JSON body with penalties, surrogates, many messages or long text; odd headers and methods."""
    from hypothesis import strategies as st

    penalty = st.one_of(st.none(), st.floats(-2, 2), st.sampled_from([0, 0.0, 1.0, 1]))
    text = st.one_of(
        st.text(max_size=40),
        st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), st.sampled_from(SURROGATES), st.text(max_size=8)),
        st.builds(lambda n: "x" * n, st.sampled_from([1, 5_000, 9_000, 200_000])),
    )
    return st.fixed_dictionaries(
        {
            "path": st.sampled_from(PATHS),
            "method": st.sampled_from(["POST"] * 8 + ["GET", "PUT", "BREW", "OPTIONS"]),
            "content_type": st.sampled_from(CONTENT_TYPES),
            "request_id": st.one_of(
                st.none(),
                st.text(st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"), max_size=200),
            ),
            "query": st.one_of(st.none(), st.text(max_size=20)),
            "messages": st.integers(1, 5_000),
            "text": text,
            "list": st.integers(1, 70),
            "presence_penalty": penalty,
            "frequency_penalty": penalty,
            "repetition_penalty": st.one_of(st.none(), st.floats(0.01, 2), st.just(1.0)),
            "stream": st.booleans(),
        }
    )


def _raw_body(case: dict) -> bytes:
    """The JSON body, with escapes (lone surrogates too) written as the client wrote them; at most ~10 MB."""
    text = json.dumps(case["text"]).replace("\\\\u", "\\u")  # \\ud800 becomes the escape \ud800
    copies = max(1, min(case["messages"] if case["path"] == PATHS[0] else case["list"], 10_000_000 // len(text)))
    body = {"model": "m", "max_tokens": 2, "stream": case["stream"]}
    body.update(
        {k: case[k] for k in ("presence_penalty", "frequency_penalty", "repetition_penalty") if case[k] is not None}
    )
    if case["path"] == PATHS[0]:
        body["messages"] = [{"role": "user", "content": SENTINEL}] * copies
    else:
        body["prompt"] = [SENTINEL] * copies
    return json.dumps(body).replace(json.dumps(SENTINEL), text).encode("utf-8", "surrogatepass")


SENTINEL = "@@text@@"


def test_hardening_inputs_no_5xx_none_lost(fuzz_proxy: Service) -> None:
    """Penalties, lone surrogates, huge message counts and texts, non-JSON types, odd methods, ids and queries."""
    import requests
    from hypothesis import given, settings

    tried, unsendable, server_errors, lost, statuses = 0, 0, [], [], {}

    @settings(
        max_examples=HARDENING_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    @given(case=_hostile_case())
    def check(case: dict) -> None:
        nonlocal tried, unsendable
        headers = {"Content-Type": case["content_type"]} if case["content_type"] else {}
        if case["request_id"] is not None:
            headers["X-Request-ID"] = case["request_id"]
        url = fuzz_proxy.url + case["path"]
        params = {"q": case["query"]} if case["query"] is not None else None
        try:
            response = requests.request(
                case["method"], url, data=_raw_body(case), headers=headers, params=params, timeout=60
            )
        except (requests.exceptions.InvalidHeader, UnicodeError):
            unsendable += 1  # requests refuses to send this header: the proxy never saw it
            return
        except requests.RequestException as exc:
            lost.append(repr(exc))
            return
        tried += 1
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            server_errors.append((case["path"], response.status_code, response.text[:300]))
        if response.status_code >= 400 and response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
            shaped = isinstance(body, dict) and set(body) == {"error"}
            assert shaped and set(body["error"]) == {"message", "type", "param", "code"}, (
                response.status_code,
                response.content[:200],
                {k: v for k, v in case.items() if k != "text"},
            )

    check()
    print(
        f"\nhardening fuzz: {tried} inputs sent ({unsendable} more refused by requests itself), "
        f"{len(server_errors)} 5xx, {len(lost)} lost; statuses {dict(sorted(statuses.items()))}"
    )
    assert not server_errors, server_errors[:3]
    assert not lost, lost[:3]
    assert tried >= HARDENING_EXAMPLES * 0.9 and statuses.get(400, 0) and statuses.get(415, 0) and statuses.get(200, 0)
