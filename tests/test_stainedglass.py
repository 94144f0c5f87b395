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
