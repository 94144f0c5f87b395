"""Helpers the test files share: names, answer checks, relay readers, ground-truth renders.

Test files import from here (and from tests.procs, tests.relay), never from
``tests.conftest`` or from one another: conftest holds only fixtures.
"""

from __future__ import annotations

import bisect
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pybase64
import requests
import torch

from tests.procs import Service, start_inference_server

if TYPE_CHECKING:
    from openai import OpenAI

    from proxy.sgt import PromptRenderer
    from tests.relay import RecordingRelay

TINY_NAME = "tiny-llama"
QUESTION = "Tell me about the secret project nightingale"
# /v1/stainedglass is off by default; the shared proxies serve it, with a small answer limit to test
STAINEDGLASS_ON = {"SGP_ENABLE_STAINEDGLASS": "True", "SGP_STAINEDGLASS_MAX_VALUES": "4096"}


# What the proxy may send in a completions upstream request: nothing of the client's text among it;
# anything else must be added here on purpose (the privacy wire test and the serving unit tests check it).
UPSTREAM_FIELDS = frozenset(
    {
        "model",
        "prompt_embeds",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logprobs",
        "stream",
        "stream_options",
    }
)


def start_tiny_upstream(tiny_model: Path, workdir: Path, *extra: str) -> Service:
    """inference_server running the tiny model under TINY_NAME."""
    return start_inference_server(workdir, "--model", str(tiny_model), "--served-model-name", TINY_NAME, *extra)


def error_shape(response: requests.Response, status: int) -> dict[str, Any]:
    """The OpenAI error object of ``response``, after checking its status and exact shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def requests_sent(relay: RecordingRelay) -> list[dict[str, Any]]:
    """The JSON bodies of the completions requests that reached the upstream."""
    raw = relay.sent()
    bodies = []
    for match in re.finditer(rb"POST /v1/completions HTTP/1.1\r\n(.*?)\r\n\r\n", raw, re.S):
        found = re.search(rb"Content-Length: (\d+)", match.group(1), re.I)
        assert found is not None
        start = match.end()
        bodies.append(json.loads(raw[start : start + int(found.group(1))]))
    return bodies


def decode_embeds(b64: str) -> torch.Tensor:
    """A ``prompt_embeds`` value (base64 of a torch.save archive) as a tensor."""
    return torch.load(io.BytesIO(pybase64.b64decode(b64, validate=True)), weights_only=True)


def chat_text(client: OpenAI, stream: bool, **args: Any) -> tuple[list[str], list[str]]:
    """Each choice's text and finish_reason, whole or streamed."""
    args = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, **args}
    if not stream:
        answer = client.chat.completions.create(**args)
        return [c.message.content for c in answer.choices], [c.finish_reason for c in answer.choices]
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(reasons)]


def chatml(messages: list[dict[str, str]], default_system: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML render of ``messages`` (with the generation prompt) and each content's span, built by hand."""
    text, spans = "", []
    if default_system is not None and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    for message in messages:
        text += f"<|im_start|>{message['role']}\n"
        spans.append((len(text), len(text) + len(message["content"])))
        text += message["content"] + "<|im_end|>\n"
    return text + "<|im_start|>assistant\n", spans


def expected_mask(renderer: PromptRenderer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it overlaps a client span (the SGT's mask, by hand)."""
    enc = renderer._tokenizer.encode(text, add_special_tokens=False)
    spans = [(start, end) for start, end in spans if start < end]  # sorted and disjoint
    starts = [start for start, _ in spans]
    mask = []
    for t_start, t_end in enc.offsets:  # overlaps the last span that starts before the token ends?
        k = bisect.bisect_left(starts, t_end) - 1
        mask.append(k >= 0 and spans[k][1] > t_start)
    return enc.ids, mask
