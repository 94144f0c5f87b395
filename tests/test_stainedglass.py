"""POST /v1/stainedglass through the real gunicorn proxy: tokens, embeddings, reconstruction, errors."""

from __future__ import annotations

import math

import requests

from tests.relay import RecordingRelay

SECRET = "my secret is zebra"


def _post(proxy, body: dict) -> requests.Response:
    return requests.post(proxy.url + "/v1/stainedglass", json=body, timeout=30)


def test_messages_with_every_flag(proxy, relay: RecordingRelay) -> None:
    relay.clear()
    r = _post(
        proxy,
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": SECRET}],
            "return_plain_text_embeddings": True,
            "return_transformed_embeddings": True,
            "return_reconstructed_prompt": True,
            "return_obfuscation_score": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    tokens = body["tokenized_plain_text"]
    assert "zebra" in "".join(tokens) and "<|im_start|>" in tokens
    plain, transformed = body["plain_text_embeddings"], body["transformed_embeddings"]
    assert len(plain) == len(transformed) == len(tokens)
    assert all(len(row) == 64 and all(math.isfinite(v) for v in row) for row in transformed)
    assert plain != transformed  # the content rows are obfuscated
    assert isinstance(body["reconstructed_prompt"], str)
    assert 0.0 <= body["obfuscation_score"] <= 1.0
    assert relay.sent() == b""  # nothing went upstream


def test_prompt_and_default_flags(proxy) -> None:
    r = _post(proxy, {"model": "tiny", "prompt": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokenized_plain_text"] and "".join(body["tokenized_plain_text"]).endswith("hello world")
    assert set(body) == {"tokenized_plain_text"}


def test_exact_sgt_reconstructs_everything(exact_proxy) -> None:
    """With no noise the nearest-neighbour decode is the prompt, and the score is 0."""
    r = _post(
        exact_proxy,
        {
            "model": "tiny",
            "prompt": "the cat sat",
            "return_reconstructed_prompt": True,
            "return_obfuscation_score": True,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["reconstructed_prompt"].endswith("the cat sat")
    assert r.json()["obfuscation_score"] == 0.0


def test_errors_are_openai_shaped(proxy) -> None:
    for body in (
        {"model": "tiny"},
        {"model": "tiny", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"model": "tiny", "prompt": "a", "return_obfuscation_score": "yes"},
        {"prompt": "a"},
    ):
        r = _post(proxy, body)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = _post(proxy, {"model": "tiny", "prompt": "x " * 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_in_the_openapi_document(proxy) -> None:
    doc = requests.get(proxy.url + "/openapi.json", timeout=10).json()
    assert "post" in doc["paths"]["/v1/stainedglass"]
    assert "StainedGlassRequest" in doc["components"]["schemas"]


def test_off_unless_enabled(launch_proxy, relay: RecordingRelay) -> None:
    """Off by default: the same 404 as any unknown path, so its existence is not even disclosed."""
    default = launch_proxy(relay.url)
    r = _post(default, {"model": "tiny", "prompt": "hello", "return_transformed_embeddings": True})
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "no such endpoint: POST /v1/stainedglass",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_answer_size_is_bounded(proxy) -> None:
    """tokens x hidden x arrays above SGP_STAINEDGLASS_MAX_VALUES (4096 here; hidden 64) is a 400."""
    prompt = " ".join(["w"] * 40)
    both = {"model": "tiny", "prompt": prompt, "return_plain_text_embeddings": True}
    tokens = len(_post(proxy, {"model": "tiny", "prompt": prompt}).json()["tokenized_plain_text"])
    assert 32 < tokens <= 64  # one array fits (tokens x 64 <= 4096), both do not
    ok = _post(proxy, both)
    assert ok.status_code == 200 and len(ok.json()["plain_text_embeddings"]) == tokens
    r = _post(proxy, {**both, "return_transformed_embeddings": True})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "stainedglass_too_large" and error["param"] == "prompt"
    assert "SGP_STAINEDGLASS_MAX_VALUES" in error["message"]
