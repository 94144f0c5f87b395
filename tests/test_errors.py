"""Every error path answers in OpenAI shape with the right status, and nothing reaches the upstream in clear."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.helpers import error_shape, requests_sent
from tests.relay import RecordingRelay

CHAT = "/v1/chat/completions"


def _post(proxy, body: bytes, path: str = CHAT, **headers: str) -> requests.Response:
    return requests.post(
        proxy.url + path, data=body, timeout=30, headers={"Content-Type": "application/json", **headers}
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":Infinity}',
        b"[1,2]",
        b'{"model":"m"}',
        b'{"messages":[{"role":"user","content":"x"}]}',
        b'{"model":"m","messages":[]}',
        b'{"model":"m","messages":[{"role":"wizard","content":"x"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":100000}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}',
        b"[" * 100000 + b"]" * 100000,
    ],
)
def test_bad_bodies_are_400(proxy, body: bytes) -> None:
    error_shape(_post(proxy, body), 400)


def test_image_part_is_a_clear_400(proxy) -> None:
    body = (
        b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url",'
        b'"image_url":{"url":"http://x/y.png"}}]}]}'
    )
    error = error_shape(_post(proxy, body), 400)
    assert "image_url" in error["message"]


def test_completions_bad_prompt_is_400(proxy) -> None:
    error_shape(_post(proxy, b'{"model":"m","prompt":42}', "/v1/completions"), 400)
    error_shape(_post(proxy, b'{"model":"m","prompt":"x","echo":true}', "/v1/completions"), 400)


def test_body_over_limit_is_413(proxy) -> None:
    big = b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (9 * 1024 * 1024) + b'"}]}'
    error_shape(_post(proxy, big), 413)


def test_too_long_prompt_is_400_before_upstream(proxy, relay) -> None:
    relay.clear()
    words = " ".join(f"word{i}" for i in range(2000))
    error = error_shape(
        _post(proxy, (f'{{"model":"m","messages":[{{"role":"user","content":"{words}"}}]}}').encode()), 400
    )
    assert "context" in error["message"]
    error = error_shape(_post(proxy, b'{"model":"m","prompt":"hello","max_tokens":100000}', "/v1/completions"), 400)
    assert error["param"] == "max_tokens"
    assert requests_sent(relay) == []


def test_unknown_path_and_method(proxy) -> None:
    error_shape(requests.get(proxy.url + "/v1/nothing", timeout=5), 404)
    error_shape(requests.get(proxy.url + CHAT, timeout=5), 405)


def test_upstream_unreachable_is_502(launch_proxy) -> None:
    from tests.procs import free_port

    address = f"127.0.0.1:{free_port()}"
    dead = launch_proxy(f"http://{address}", SGP_UPSTREAM_MODEL="m")
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}'
    for error in (
        error_shape(_post(dead, body), 502),
        error_shape(requests.get(dead.url + "/v1/models", timeout=10), 502),
    ):
        assert error["message"] == "the inference service is unreachable"  # its address is for the log only
    assert f"the inference service at http://{address} is unreachable" in dead.log()
    assert requests.get(dead.url + "/readyz", timeout=10).status_code == 503


def test_upstream_timeout_is_504(launch_proxy) -> None:
    hung = RecordingRelay(target_port=0, answer=False)
    try:
        slow = launch_proxy(hung.url, SGP_UPSTREAM_MODEL="m", SGP_UPSTREAM_TIMEOUT_SECONDS="1")
        error = error_shape(_post(slow, b'{"model":"m","messages":[{"role":"user","content":"x"}]}'), 504)
        assert str(hung.port) not in error["message"] and "127.0.0.1" not in error["message"]
        assert f"the inference service at {hung.url} timed out" in slow.log()
    finally:
        hung.close()


def test_upstream_errors_pass_through(launch_proxy, upstream) -> None:
    # the inference server's 401 (wrong api key) comes back as such; the right key passes
    from tests.procs import start_inference_server

    keyed = start_inference_server(
        upstream.log_path.parent,
        "--model",
        _model_dir(upstream),
        "--served-model-name",
        "tiny-llama",
        "--api-key",
        "right-key",
    )
    try:
        proxy = launch_proxy(keyed.url, SGP_UPSTREAM_MODEL="tiny-llama")
        body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":2}'
        error = error_shape(_post(proxy, body, Authorization="Bearer wrong-key"), 401)
        assert error["type"]
        ok = _post(proxy, body, Authorization="Bearer right-key")
        assert ok.status_code == 200, ok.text
    finally:
        keyed.stop()


def test_basic_auth_replaces_client_key(launch_proxy, upstream) -> None:
    recorder = RecordingRelay(upstream.port)
    try:
        proxy = launch_proxy(recorder.url, SGP_API_USERNAME="alice", SGP_API_PASSWORD="s3cret-pw")
        r = _post(
            proxy,
            b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":2}',
            Authorization="Bearer client-key",
        )
        assert r.status_code == 200, r.text
        sent = recorder.sent()
        assert b"Authorization: Basic YWxpY2U6czNjcmV0LXB3" in sent  # base64("alice:s3cret-pw")
        assert b"client-key" not in sent
        assert b"s3cret-pw" not in proxy.log().encode()
    finally:
        recorder.close()


def test_client_authorization_forwarded_without_credentials(proxy, relay) -> None:
    relay.clear()
    _post(
        proxy,
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1}',
        Authorization="Bearer sk-client",
    )
    assert b"Authorization: Bearer sk-client" in relay.sent()


def test_concurrent_requests_all_answered(proxy) -> None:
    results: list[int] = []

    def one(i: int) -> None:
        r = _post(
            proxy,
            b'{"model":"m","messages":[{"role":"user","content":"hello %d"}],"max_tokens":3,"stream":%s}'
            % (i, b"true" if i % 2 else b"false"),
        )
        results.append(r.status_code if r.content.rstrip().endswith((b"}", b"[DONE]")) else -1)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 12


def test_logs_hold_no_prompt_text(proxy) -> None:
    _post(proxy, b'{"model":"m","messages":[{"role":"user","content":"zebra-unicorn-password"}],"max_tokens":2}')
    assert "zebra-unicorn" not in proxy.log()


def _model_dir(upstream) -> str:
    args = upstream.proc.args
    return args[args.index("--model") + 1]


def test_a_chat_template_that_refuses_the_messages_is_400(launch_proxy, upstream, tiny_sgt, tmp_path) -> None:
    """A template's ``raise_exception`` (roles out of order, say) is the client's error, not a 500."""
    from proxy.sgt import load_sgt_file, save_sgt_file

    data = load_sgt_file(tiny_sgt)
    data["tokenizer"] = dict(data["tokenizer"])
    data["tokenizer"]["chat_template"] = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be the user\\'s') }}"
        "{% endif %}" + data["tokenizer"]["chat_template"]
    )
    strict = launch_proxy(upstream.url, SGP_SGT_PATH=str(save_sgt_file(tmp_path / "strict.pt", data)))
    body = b'{"model":"m","messages":[{"role":"assistant","content":"hi"}],"max_tokens":2}'
    error = error_shape(_post(strict, body), 400)
    assert "first message must be the user" in error["message"] and error["param"] == "messages"
    assert _post(strict, body.replace(b"assistant", b"user")).status_code == 200
