"""The proxy core end to end: real gunicorn, real inference_server, real OpenAI SDK, real sockets."""

from __future__ import annotations

import pytest
import requests
import torch
from openai import OpenAI

from tests.helpers import TINY_NAME, decode_embeds, requests_sent

QUESTION = "Tell me about the secret project nightingale"


def test_models_list_is_the_upstreams(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [TINY_NAME]


def test_chat_whole(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="any-name", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, seed=3
    )
    assert answer.object == "chat.completion"
    assert answer.model == "any-name"
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage.completion_tokens <= 8
    assert answer.usage.prompt_tokens > 5


def test_chat_streamed_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_stream_headers_and_done(proxy) -> None:
    with requests.post(
        proxy.url + "/v1/chat/completions",
        stream=True,
        timeout=60,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Accel-Buffering"] == "no"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    assert all(line.startswith(b"data: ") for line in lines)


def test_completions_whole_streamed_and_list(client: OpenAI) -> None:
    whole = client.completions.create(model="m", prompt="Once upon a time", max_tokens=5)
    assert whole.object == "text_completion" and isinstance(whole.choices[0].text, str)
    pieces = list(client.completions.create(model="m", prompt="Once upon a time", max_tokens=5, stream=True))
    assert pieces and all(p.object == "text_completion" for p in pieces)
    several = client.completions.create(model="m", prompt=["one", "two two"], max_tokens=3)
    assert len(several.choices) == 2


def test_chat_n_and_content_parts(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="m",
        n=2,
        max_tokens=4,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        ],
    )
    assert sorted(c.index for c in answer.choices) == [0, 1]


def test_upstream_gets_embeddings_not_text(client: OpenAI, relay) -> None:
    relay.clear()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=2)
    client.completions.create(model="m", prompt=QUESTION, max_tokens=2, stream=True).close()
    sent = relay.sent()
    assert b"nightingale" not in sent and b"secret project" not in sent
    bodies = requests_sent(relay)
    assert len(bodies) == 2
    for body in bodies:
        assert "prompt" not in body and "messages" not in body
        assert body["model"] == TINY_NAME
        embeds = decode_embeds(body["prompt_embeds"])
        assert embeds.dim() == 2 and embeds.shape[1] == 64 and embeds.is_contiguous()
        assert embeds.dtype in (torch.float32, torch.bfloat16, torch.float16)


def test_sampling_fields_passed_on(client: OpenAI, relay) -> None:
    """Penalties are refused unless allowed (vLLM#57719): tests/test_hardening.py covers them."""
    relay.clear()
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        temperature=0.7,
        top_p=0.9,
        seed=11,
        stop=["\n"],
        logprobs=True,
        top_logprobs=2,
        user="u1",
    )
    (body,) = requests_sent(relay)
    assert {
        k: body[k]
        for k in (
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "logprobs",
        )
    } == {
        "max_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 11,
        "logprobs": 2,
    }
    assert "user" not in body  # it names the end user: dropped (docs/request-fields.md)
    assert "stop" not in body  # applied by the proxy (tests/test_stop.py)


def test_default_max_tokens_is_the_setting(client: OpenAI, relay) -> None:
    relay.clear()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert requests_sent(relay)[0]["max_tokens"] == 12  # SGP_MAX_NEW_TOKENS in conftest


def test_exact_sgt_matches_the_model_itself(exact_proxy, upstream) -> None:
    """With a no-noise SGT the proxy must reproduce the model's own greedy answer: embeddings are right."""
    plain = requests.post(
        upstream.url + "/v1/completions",
        timeout=60,
        json={"model": TINY_NAME, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0},
    ).json()
    proxied = requests.post(
        exact_proxy.url + "/v1/completions",
        timeout=60,
        json={"model": "m", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0},
    ).json()
    assert proxied["choices"][0]["text"] == plain["choices"][0]["text"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streamed_and_whole_agree(exact_proxy, kind: str) -> None:
    client = OpenAI(base_url=exact_proxy.url + "/v1", api_key="x", max_retries=0)
    args = {"model": "m", "max_tokens": 10, "temperature": 1.0, "seed": 1234}
    if kind == "chat":
        args["messages"] = [{"role": "user", "content": QUESTION}]
        whole = client.chat.completions.create(**args).choices[0].message.content
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True) if c.choices
        )
    else:
        args["prompt"] = QUESTION
        whole = client.completions.create(**args).choices[0].text
        streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True) if c.choices)
    assert whole == streamed and whole


def test_request_id_echoed_or_made(proxy) -> None:
    given = requests.get(proxy.url + "/livez", headers={"X-Request-ID": "abc-123"}, timeout=5)
    assert given.headers["X-Request-ID"] == "abc-123"
    made = requests.get(proxy.url + "/livez", timeout=5)
    assert len(made.headers["X-Request-ID"]) >= 16


def test_probes(proxy) -> None:
    assert requests.get(proxy.url + "/livez", timeout=5).json() == {"status": "ok"}
    assert requests.get(proxy.url + "/readyz", timeout=5).status_code == 200


def test_openapi_and_docs(proxy) -> None:
    spec = requests.get(proxy.url + "/openapi.json", timeout=5).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/livez", "/readyz"):
        assert path in spec["paths"]
    post = spec["paths"]["/v1/chat/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert "ChatCompletionRequest" in spec["components"]["schemas"]
    docs = requests.get(proxy.url + "/docs", timeout=5)
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    assert b"unpkg.com" not in docs.content and b"cdn" not in docs.content.lower()
