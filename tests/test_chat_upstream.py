"""SGP_UPSTREAM_API=chat: chat requests go to the upstream's /v1/chat/completions as prompt_embeds content parts.

Real gunicorn, the real inference_server with the tiny model, the real OpenAI SDK, a recording relay.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pybase64
import pytest
import requests
import torch
from openai import OpenAI

from proxy.sgt import SGTRuntime
from tests.helpers import TINY_NAME, chat_text, decode_embeds
from tests.procs import Service
from tests.relay import RecordingRelay

SECRET = "Tell me about the secret project nightingale"
MESSAGES = [
    {"role": "system", "content": "You answer in one short line."},
    {"role": "user", "content": SECRET},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
]
GREEDY = {"max_tokens": 10, "temperature": 0}


@pytest.fixture(scope="module")
def chat_exact_proxy(launch_proxy, upstream: Service, exact_sgt: Path) -> Service:
    return launch_proxy(upstream.url, SGP_SGT_PATH=str(exact_sgt), SGP_UPSTREAM_API="chat")


@pytest.fixture(scope="module")
def chat_relay(upstream: Service) -> Iterator[RecordingRelay]:
    recorder = RecordingRelay(upstream.port)
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def chat_relayed_proxy(launch_proxy, chat_relay: RecordingRelay) -> Service:
    """The noisy tiny SGT in chat mode, behind the recording relay."""
    return launch_proxy(chat_relay.url, SGP_UPSTREAM_API="chat")


def _sdk(service: Service) -> OpenAI:
    return OpenAI(base_url=service.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def _bodies(relay: RecordingRelay, path: str) -> list[dict]:
    raw = relay.sent()
    bodies = []
    for match in re.finditer(rb"POST " + re.escape(path.encode()) + rb" HTTP/1.1\r\n(.*?)\r\n\r\n", raw, re.S):
        length = int(re.search(rb"Content-Length: (\d+)", match.group(1), re.I).group(1))
        bodies.append(json.loads(raw[match.end() : match.end() + length]))
    return bodies


def test_whole_chat_equals_completions_mode(chat_exact_proxy: Service, exact_proxy: Service) -> None:
    """Noise-free SGT, greedy: the upstream's template + spliced content embeddings = the proxy's own rendering."""
    expected = _sdk(exact_proxy).chat.completions.create(model="m", messages=MESSAGES, **GREEDY)
    got = _sdk(chat_exact_proxy).chat.completions.create(model="client-name", messages=MESSAGES, **GREEDY)
    assert got.object == "chat.completion" and got.model == "client-name"
    assert got.id.startswith("chatcmpl-")
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.choices[0].message.content
    assert got.choices[0].finish_reason == expected.choices[0].finish_reason
    assert got.usage.prompt_tokens == expected.usage.prompt_tokens  # the same number of prompt rows


def test_streamed_chat_equals_completions_mode(chat_exact_proxy: Service, exact_proxy: Service) -> None:
    expected = _sdk(exact_proxy).chat.completions.create(model="m", messages=MESSAGES, **GREEDY)
    chunks = list(
        _sdk(chat_exact_proxy).chat.completions.create(
            model="client-name", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one role chunk, not two
    assert all(c.object == "chat.completion.chunk" and c.model == "client-name" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content and text
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == expected.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        expected.choices[0].finish_reason
    ]


def test_stream_ends_with_done(chat_exact_proxy: Service) -> None:
    with requests.post(
        chat_exact_proxy.url + "/v1/chat/completions",
        stream=True,
        timeout=60,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]" and len(lines) >= 3


def test_upstream_gets_content_embeds_never_text(
    chat_relayed_proxy: Service, chat_relay: RecordingRelay, tiny_sgt: Path
) -> None:
    chat_relay.clear()
    client = _sdk(chat_relayed_proxy)
    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, seed=5, temperature=0.5)
    list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stream=True))
    client.completions.create(model="m", prompt=SECRET, max_tokens=2)
    sent = chat_relay.sent()
    assert b'"type": "prompt_embeds"' in sent
    for text in (b"nightingale", b"secret project", b"one short line", b"part one", b"part two"):
        assert text not in sent
    chats = _bodies(chat_relay, "/v1/chat/completions")
    assert len(chats) == 2 and len(_bodies(chat_relay, "/v1/completions")) == 1  # completions stay completions
    renderer = SGTRuntime.load(tiny_sgt).renderer
    for body in chats:
        assert body["model"] == TINY_NAME and body["max_tokens"] == 2 and "prompt_embeds" not in body
        assert [m["role"] for m in body["messages"]] == [m["role"] for m in MESSAGES]
        assert body["messages"][2]["content"] == ""  # an empty content is an empty string, not an empty tensor
        for sent_message, message in zip(body["messages"], MESSAGES, strict=True):
            if not sent_message["content"]:
                continue
            (part,) = sent_message["content"]
            assert set(part) == {"type", "data"} and part["type"] == "prompt_embeds"
            rows = decode_embeds(part["data"])
            text = message["content"] if isinstance(message["content"], str) else "part one\npart two"
            assert rows.shape == (len(renderer.render_content(text)), 64) and rows.is_contiguous()
    assert chats[0]["seed"] == 5 and chats[0]["temperature"] == 0.5 and chats[1]["stream"] is True


def test_logprobs_are_asked_the_chat_way(chat_relayed_proxy: Service, chat_relay: RecordingRelay) -> None:
    chat_relay.clear()
    answer = _sdk(chat_relayed_proxy).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2, logprobs=True, top_logprobs=2
    )
    (body,) = _bodies(chat_relay, "/v1/chat/completions")
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert answer.choices[0].logprobs.content and answer.choices[0].logprobs.content[0].top_logprobs


def test_text_only_chat_on_the_inference_server(upstream: Service, exact_proxy: Service) -> None:
    """Without prompt_embeds parts the server's chat template alone gives the proxy's rendering."""
    expected = _sdk(exact_proxy).chat.completions.create(model="m", messages=MESSAGES, **GREEDY)
    direct = requests.post(
        upstream.url + "/v1/chat/completions", json={"model": TINY_NAME, "messages": MESSAGES, **GREEDY}, timeout=60
    ).json()
    assert direct["object"] == "chat.completion"
    assert direct["choices"][0]["message"]["content"] == expected.choices[0].message.content
    assert direct["usage"]["prompt_tokens"] == expected.usage.prompt_tokens


def test_null_inference_server_answers_chat(null_upstream: Service) -> None:
    embeds = pybase64.b64encode(_tensor_bytes(torch.zeros(3, 64))).decode()
    messages = [{"role": "user", "content": [{"type": "prompt_embeds", "data": embeds}, {"type": "text", "text": "x"}]}]
    whole = requests.post(null_upstream.url + "/v1/chat/completions", json={"messages": messages}, timeout=30).json()
    assert whole["choices"][0]["message"]["content"] == " tok" * 8
    bad = requests.post(
        null_upstream.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "prompt_embeds"}]}]},
        timeout=30,
    )
    assert bad.status_code == 400 and "data" in bad.json()["error"]["message"]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SGP_UPSTREAM_API": "responses"}, ["SGP_UPSTREAM_API"]),
        ({"SGP_UPSTREAM_API": "chat", "SGP_OUTPUT_DECRYPTION": "True"}, ["SGP_UPSTREAM_API", "SGP_OUTPUT_DECRYPTION"]),
    ],
)
def test_bad_upstream_api_stops_start_up(launch_proxy, upstream: Service, env: dict, named: list[str]) -> None:
    with pytest.raises(RuntimeError) as failed:
        launch_proxy(upstream.url, **env)
    for variable in named:
        assert variable in str(failed.value)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_is_applied_to_a_chat_upstreams_answer(chat_exact_proxy: Service, stream: bool) -> None:
    client = _sdk(chat_exact_proxy)
    (full,), _ = chat_text(client, False, temperature=0)
    stop = full[3:6]
    expected = full[: full.find(stop)]
    assert chat_text(client, stream, temperature=0, stop=[stop], n=2) == ([expected, expected], ["stop", "stop"])
