"""Issue #16 against real gunicorn proxies: client keys, 415, penalties, cost limits, bad input, hygiene."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai import OpenAI

from proxy.settings import Settings, SettingsError
from tests.procs import Service, scrape_metrics
from tests.relay import RecordingRelay
from tests.test_proxy_core import _error_shape

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HASHED_KEY = "sk-hashed-second-key"
PLAIN_KEY = "sk-plain-first-key"
FILE_KEY = "sk-from-the-secret-file"


def _post(proxy: Service, path: str, body: dict | bytes, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        proxy.url + path, data=data, timeout=30, headers={"Content-Type": "application/json", **headers}
    )


def _chat(content: str = "hi", **fields: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


@pytest.fixture(scope="module")
def keyed(launch_proxy: Callable[..., Service], upstream: Service) -> Iterator[tuple[Service, RecordingRelay]]:
    """A proxy that requires client keys, without upstream credentials: the upstream gets no Authorization."""
    recorder = RecordingRelay(upstream.port)
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    yield launch_proxy(recorder.url, SGP_CLIENT_API_KEYS=f"{PLAIN_KEY}, sha256:{digest}"), recorder
    recorder.close()


def test_client_keys_are_required_and_never_forwarded(keyed: tuple[Service, RecordingRelay]) -> None:
    proxy, recorder = keyed
    for key in (PLAIN_KEY, HASHED_KEY):
        client = OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=60)
        chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert chat.choices[0].message.content is not None
        assert client.completions.create(model="m", prompt="hi", max_tokens=2).choices
        assert client.models.list().data
    wrong = OpenAI(base_url=proxy.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    for headers in ({}, {"Authorization": PLAIN_KEY}, {"Authorization": "Basic " + PLAIN_KEY}):
        r = _post(proxy, CHAT, _chat(), **headers)
        assert _error_shape(r, 401)["code"] == "invalid_api_key"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(proxy.url + "/v1/models", timeout=10).status_code == 401
    assert requests.get(proxy.url + "/v1/no-such-thing", timeout=10).status_code == 401  # no endpoint map for guests
    # probes and the API description stay open; metrics need the key (or SGP_METRICS_PORT)
    for path in ("/livez", "/readyz", "/openapi.json"):
        assert requests.get(proxy.url + path, timeout=10).status_code == 200, path
    assert requests.get(proxy.url + "/metrics", timeout=10).status_code == 401
    scraped = requests.get(proxy.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {HASHED_KEY}"})
    assert scraped.status_code == 200 and "sgp_requests_total" in scraped.text
    sent = recorder.sent()
    assert b"prompt_embeds" in sent  # the requests did go upstream ...
    for secret in (PLAIN_KEY.encode(), HASHED_KEY.encode(), b"sk-wrong", b"Authorization:"):
        assert secret not in sent  # ... without the client's key, or any Authorization at all
    assert PLAIN_KEY not in proxy.log() and HASHED_KEY not in proxy.log()


def test_client_keys_from_a_file_and_basic_auth_upstream(launch_proxy, upstream: Service, tmp_path: Path) -> None:
    keys = tmp_path / "client-keys"
    keys.write_text(f"# mounted from a Kubernetes Secret\n\n{FILE_KEY}\n  sha256:{'0' * 64}  \n", encoding="utf-8")
    recorder = RecordingRelay(upstream.port)
    try:
        proxy = launch_proxy(
            recorder.url, SGP_CLIENT_API_KEYS_FILE=str(keys), SGP_API_USERNAME="alice", SGP_API_PASSWORD="pw-x"
        )
        assert _post(proxy, CHAT, _chat(), Authorization=f"Bearer {FILE_KEY}").status_code == 200
        assert _post(proxy, CHAT, _chat(), Authorization="Bearer # mounted").status_code == 401
        sent = recorder.sent()
        assert b"Authorization: Basic YWxpY2U6cHcteA==" in sent and FILE_KEY.encode() not in sent
    finally:
        recorder.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SGP_CLIENT_API_KEYS": "sha256:abc"}, "SGP_CLIENT_API_KEYS"),
        ({"SGP_CLIENT_API_KEYS": " , ,"}, "SGP_CLIENT_API_KEYS"),
        ({"SGP_CLIENT_API_KEYS_FILE": "/nonexistent/keys"}, "SGP_CLIENT_API_KEYS_FILE"),
        ({"SGP_MAX_MESSAGES": "0"}, "SGP_MAX_MESSAGES"),
        ({"SGP_MAX_CHARS_PER_TOKEN": "-1"}, "SGP_MAX_CHARS_PER_TOKEN"),
        ({"SGP_MAX_SSE_LINE_BYTES": "10"}, "SGP_MAX_SSE_LINE_BYTES"),
    ],
)
def test_bad_hardening_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as failed:
        Settings.from_env(env)
    assert str(failed.value).startswith(named)


def test_a_key_file_without_keys_stops_start_up(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="SGP_CLIENT_API_KEYS_FILE"):
        Settings.from_env({"SGP_CLIENT_API_KEYS_FILE": str(empty)})


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_post_bodies_that_are_not_json_get_415(proxy: Service, relay: RecordingRelay, content_type: str | None) -> None:
    relay.clear()
    headers = {"Origin": "https://elsewhere.example"}
    if content_type:
        headers["Content-Type"] = content_type
    body = json.dumps(_chat()).encode()
    r = requests.post(proxy.url + CHAT, data=body, headers=headers, timeout=10)
    assert _error_shape(r, 415)["code"] == "unsupported_media_type"
    assert relay.sent() == b""
    ok = requests.post(
        proxy.url + CHAT, data=body, headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30
    )
    assert ok.status_code == 200, ok.text


PENALTIES = [
    (CHAT, "presence_penalty", 0.5),
    (CHAT, "frequency_penalty", -1.0),
    (CHAT, "repetition_penalty", 1.2),
    (COMPLETIONS, "presence_penalty", 2.0),
    (COMPLETIONS, "frequency_penalty", 0.1),
    (COMPLETIONS, "repetition_penalty", 0.8),
]


def _body(path: str, **fields: object) -> dict:
    if path == CHAT:
        return _chat(**fields)
    return {"model": "m", "prompt": "hi", "max_tokens": 2, **fields}


@pytest.mark.parametrize(("path", "field", "value"), PENALTIES)
def test_penalties_are_refused_and_nothing_goes_upstream(
    proxy: Service, relay: RecordingRelay, path: str, field: str, value: float
) -> None:
    _post(proxy, path, _body(path))  # the upstream model name is known: nothing else would go upstream
    relay.clear()
    for stream in (False, True):
        error = _error_shape(_post(proxy, path, _body(path, stream=stream, **{field: value})), 400)
        assert error["param"] == field and error["code"] == "unsupported_penalty"
        assert field in error["message"] and "vllm-project/vllm#57719" in error["message"]
    assert relay.sent() == b""


def test_neutral_penalties_are_accepted_and_not_forwarded(proxy: Service, relay: RecordingRelay) -> None:
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}
    for path in (CHAT, COMPLETIONS):
        relay.clear()
        r = _post(proxy, path, _body(path, **neutral))
        assert r.status_code == 200, r.text
        assert b"prompt_embeds" in relay.sent() and b"penalty" not in relay.sent()


def test_allow_penalties_forwards_them(launch_proxy, upstream: Service) -> None:
    recorder = RecordingRelay(upstream.port)
    try:
        proxy = launch_proxy(recorder.url, SGP_ALLOW_PENALTIES="True")
        for path in (CHAT, COMPLETIONS):
            r = _post(proxy, path, _body(path, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.1))
            assert r.status_code == 200, r.text
        sent = recorder.sent()
        assert sent.count(b'"presence_penalty": 0.5') == 2 and sent.count(b'"repetition_penalty": 1.1') == 2
        assert sent.count(b'"frequency_penalty": 0.25') == 2
    finally:
        recorder.close()


class _Prober:
    """Polls /livez on the side while a test sends expensive requests: the worst time seen, and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures = 0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = requests.get(self.url + "/livez", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            self.worst = max(self.worst, time.monotonic() - started)
            self.answered += ok
            self.failures += not ok
            self._stop.wait(0.05)


def test_expensive_requests_are_refused_before_any_work(proxy: Service, relay: RecordingRelay) -> None:
    many = {"model": "m", "messages": [{"role": "user", "content": "a"}] * 30_000}
    huge = _chat("x" * 7_000_000)
    huge_prompt = {"model": "m", "prompt": "y" * 7_000_000}
    huge_name = {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "n" * 7_000_000}]}
    huge_tool = {"type": "function", "function": {"name": "f", "description": "d" * 7_000_000}}
    huge_tools = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [huge_tool]}
    relay.clear()
    with _Prober(proxy.url) as prober:
        for path, body, code, param in [
            (CHAT, many, "too_many_messages", "messages"),
            (CHAT, huge, "context_length_exceeded", "messages"),
            (COMPLETIONS, huge_prompt, "context_length_exceeded", "prompt"),
            (CHAT, huge_name, "context_length_exceeded", "messages"),
            (CHAT, huge_tools, "context_length_exceeded", "messages"),
            ("/v1/stainedglass", {**many, "return_obfuscation_score": True}, "too_many_messages", "messages"),
            ("/v1/stainedglass", {"model": "m", "prompt": "z" * 7_000_000}, "context_length_exceeded", "prompt"),
        ]:
            started = time.monotonic()
            r = _post(proxy, path, body)
            elapsed = time.monotonic() - started
            if r.status_code == 404:  # /v1/stainedglass switched off in this build
                continue
            error = _error_shape(r, 400)
            assert (error["code"], error["param"]) == (code, param), error
            assert elapsed < 5, f"{path} took {elapsed:.1f} s to refuse"
            print(f"\n{path} {code}: refused in {elapsed * 1000:.0f} ms")
        time.sleep(0.2)
    print(f"/livez meanwhile: {prober.answered} answers, worst {prober.worst * 1000:.0f} ms")
    assert prober.answered and not prober.failures and prober.worst < 5, vars(prober)
    assert relay.sent() == b""


def test_a_prompt_list_over_the_batch_token_limit_is_refused(launch_proxy, upstream: Service) -> None:
    recorder = RecordingRelay(upstream.port)
    try:
        proxy = launch_proxy(recorder.url, SGP_MAX_BATCH_TOKENS="200", SGP_UPSTREAM_MODEL="tiny-llama")
        prompts = ["one two three four five six seven eight nine ten " * 3] * 8  # 8 prompts of ~30+ tokens
        error = _error_shape(_post(proxy, COMPLETIONS, {"model": "m", "prompt": prompts, "max_tokens": 2}), 400)
        assert error["code"] == "too_many_tokens" and "SGP_MAX_BATCH_TOKENS" in error["message"]
        assert recorder.sent() == b""
        one = _post(proxy, COMPLETIONS, {"model": "m", "prompt": prompts[:2], "max_tokens": 2})  # under the limit
        assert one.status_code == 200 and len(one.json()["choices"]) == 2
    finally:
        recorder.close()


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (CHAT, b'{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}]}'),
        (CHAT, b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"\\udfff"}]}]}'),
        (COMPLETIONS, b'{"model":"m","prompt":"\\ud800"}'),
        (COMPLETIONS, b'{"model":"m","prompt":["ok","x\\uDBFF"]}'),
        ("/v1/stainedglass", b'{"model":"m","prompt":"\\ud800"}'),
    ],
)
def test_a_lone_surrogate_is_a_400(proxy: Service, path: str, raw: bytes) -> None:
    r = _post(proxy, path, raw)
    if r.status_code == 404 and path == "/v1/stainedglass":
        return
    assert _error_shape(r, 400)["code"] == "invalid_json"


def test_a_surrogate_pair_is_a_character(proxy: Service) -> None:
    r = _post(proxy, CHAT, b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00 NaN"}],"max_tokens":2}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("given", "kept"),
    [("trace-1.2_3:abc", True), ("a" * 128, True), ("a" * 129, False), ("<script>", False), ("id with space", False)],
)
def test_a_client_request_id_is_kept_only_when_safe(proxy: Service, given: str, kept: bool) -> None:
    r = requests.get(proxy.url + "/livez", headers={"X-Request-ID": given}, timeout=10)
    answered = r.headers["X-Request-ID"]
    if kept:
        assert answered == given
    else:
        assert answered != given and len(answered) == 32 and int(answered, 16) >= 0


def test_made_up_methods_share_one_metrics_label(proxy: Service) -> None:
    for method in ("FOO", "BREW", "PROPFIND"):
        assert requests.request(method, proxy.url + "/livez", timeout=10).status_code == 405
    text = scrape_metrics(proxy.url + "/metrics", lambda t: 'method="other"' in t)
    assert 'method="other"' in text
    assert not [m for m in ("FOO", "BREW", "PROPFIND") if f'method="{m}"' in text]


def test_the_access_log_has_no_query_string(proxy: Service) -> None:
    r = requests.get(proxy.url + "/v1/models?api_key=sk-in-the-query&q=private", timeout=10)
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while "GET /v1/models HTTP/1.1" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proxy.log()
    assert "GET /v1/models HTTP/1.1" in log
    assert "sk-in-the-query" not in log and "q=private" not in log
