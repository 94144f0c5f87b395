"""A prompt list's embeddings are made one at a time as the body is sent, with the same wire format."""

from __future__ import annotations

import base64
import gc
import io
import json
import weakref

import pytest
import requests
import torch

from proxy.upstream import EmbedsBody, PromptEmbeds
from tests.procs import Service


def decode_prompt_embeds(value: str | bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(base64.b64decode(value, validate=True)), weights_only=True)


SHAPES = [(1, 64), (35, 64), (700, 96), (5000, 128)]  # the last ones cross the 768 KiB base64 slice


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_deferred_value_sends_what_an_eager_one_sends(shape: tuple[int, int], dtype: torch.dtype) -> None:
    tensor = torch.randn(shape).to(dtype)
    eager, deferred = PromptEmbeds(tensor), PromptEmbeds.deferred(lambda: tensor.clone(), shape, dtype)
    assert deferred.b64_len == eager.b64_len
    eager_b64 = b"".join(eager.b64_chunks())
    deferred_b64 = b"".join(deferred.b64_chunks())
    assert len(deferred_b64) == len(eager_b64) == deferred.b64_len
    for wire in (eager_b64, deferred_b64):
        assert torch.equal(decode_prompt_embeds(wire.decode()), tensor)


def test_a_list_body_makes_one_tensor_at_a_time_and_keeps_its_length() -> None:
    shape, live, made = (300, 64), weakref.WeakSet(), []

    def make(seed: int):
        def run() -> torch.Tensor:
            gc.collect()
            made.append(len(live))  # tensors of earlier prompts still alive when this one is made
            tensor = torch.full(shape, float(seed))
            live.add(tensor)
            return tensor

        return run

    embeds = [PromptEmbeds.deferred(make(i), shape, torch.float32) for i in range(4)]
    body = EmbedsBody({"model": "m", "prompt_embeds": embeds, "max_tokens": 2})
    assert made == []  # nothing transformed before the body is sent
    sent = b"".join(body)
    assert made == [0, 0, 0, 0] and len(sent) == len(body)
    values = json.loads(sent)["prompt_embeds"]
    for i, value in enumerate(values):
        assert torch.equal(decode_prompt_embeds(value), torch.full(shape, float(i)))


def test_a_deferred_value_that_comes_out_otherwise_is_refused() -> None:
    wrong = PromptEmbeds.deferred(lambda: torch.zeros(3, 64), (4, 64), torch.float32)
    with pytest.raises(RuntimeError, match="not as announced"):
        b"".join(wrong.b64_chunks())


def test_a_prompt_list_through_gunicorn(proxy: Service, relay) -> None:
    relay.clear()
    prompts = ["first prompt", "a second, longer prompt than the first", "3"]
    r = requests.post(
        proxy.url + "/v1/completions", json={"model": "m", "prompt": prompts, "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert sorted(c["index"] for c in r.json()["choices"]) == [0, 1, 2]
    sent = relay.sent()
    request = sent[sent.index(b"POST /v1/completions") :]
    body = json.loads(request[request.index(b"\r\n\r\n") + 4 :])
    shapes = [tuple(decode_prompt_embeds(value).shape) for value in body["prompt_embeds"]]
    assert len(shapes) == 3 and all(rows >= 1 and hidden == 64 for rows, hidden in shapes), shapes
    assert shapes[1][0] > shapes[2][0]
