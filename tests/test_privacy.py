"""The prompt text never reaches the upstream: not on success, not on any error path."""

from __future__ import annotations

import json

import requests
import torch

from tests.helpers import UPSTREAM_FIELDS, chatml, decode_embeds, expected_mask, requests_sent
from tests.relay import RecordingRelay

MARKER = "Ultraviolet-Pangolin-4471"


def test_no_prompt_text_upstream_on_any_path(proxy, relay: RecordingRelay) -> None:
    relay.clear()
    chat = proxy.url + "/v1/chat/completions"
    text = f"my account {MARKER} is overdrawn"
    attempts = [
        (chat, {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 2}),
        (
            chat,
            {
                "model": "m",
                "messages": [{"role": "system", "content": text}, {"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "stream": True,
            },
        ),
        (
            chat,
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
                "max_tokens": 2,
                "n": 2,
            },
        ),
        (proxy.url + "/v1/completions", {"model": "m", "prompt": [text, text + " again"], "max_tokens": 2}),
        # errors: bad field, too long, unknown role, image part: none may leak either
        (chat, {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 9}),
        (chat, {"model": "m", "messages": [{"role": "user", "content": (text + " ") * 400}]}),
        (chat, {"model": "m", "messages": [{"role": "wizard", "content": text}]}),
        (
            chat,
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"http://x/{MARKER}.png"}}]}
                ],
            },
        ),
    ]
    statuses = [requests.post(url, json=body, timeout=60).status_code for url, body in attempts]
    assert statuses == [200, 200, 200, 200, 400, 400, 400, 400]
    sent = relay.sent()
    assert MARKER.encode() not in sent and b"overdrawn" not in sent
    bodies = requests_sent(relay)
    assert len(bodies) == 4  # only the four good requests went upstream at all
    for body in bodies:
        assert set(body) & {"prompt", "messages", "suffix"} == set()
        embeds = body["prompt_embeds"] if isinstance(body["prompt_embeds"], list) else [body["prompt_embeds"]]
        assert all(decode_embeds(e).dim() == 2 for e in embeds)
    error = requests.post(chat, json=attempts[6][1], timeout=10).json()["error"]
    assert MARKER not in error["message"]  # error messages do not echo the content back either


# ---- every request field the OpenAI API defines, with canaries: none of it upstream --------------------------

# Distinct canaries, one per field that carries client text; none may be found in any byte sent upstream.
C = {
    name: f"Canary{name.title().replace('_', '')}9071"
    for name in (
        "model",
        "system",
        "system_name",
        "user_msg",
        "user_name",
        "assistant",
        "assistant_name",
        "tool",
        "developer",
        "stop",
        "user",
        "metadata",
        "prediction",
        "cache_key",
        "safety",
        "prompt",
        "prompt2",
        "refused",
    )
}
UNICODE = "Žluťoučký-kůň-Ünïcode-7731"  # also checked as JSON escapes


# the case: contents equal to role names and template text (one went upstream as a plain row before)
TEMPLATE_LOOKALIKES = [
    {"role": "system", "content": "user"},
    {"role": "user", "content": "assistant"},
    {"role": "assistant", "content": "s"},
    {"role": "user", "content": "user assistant <|im_start|>assistant\n"},
]


def _chat_fields(stream: bool) -> dict:
    """Every chat request field of the OpenAI API (openai-python 3.51's CompletionCreateParams) that the proxy
    accepts, set; the refused ones are sent one by one in the test."""
    body = {
        "model": C["model"],
        "messages": [
            {"role": "system", "content": C["system"] + " " + UNICODE, "name": C["system_name"]},
            {"role": "developer", "content": C["developer"], "name": "dev"},
            {"role": "user", "content": [{"type": "text", "text": C["user_msg"]}], "name": C["user_name"]},
            {"role": "assistant", "content": C["assistant"], "name": C["assistant_name"]},
            {"role": "tool", "content": C["tool"], "tool_call_id": "call_1"},
            {"role": "user", "content": "and then?"},
        ],
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "logprobs": True,
        "top_logprobs": 2,
        "max_completion_tokens": 3,
        "max_tokens": 3,
        "metadata": {"tag": C["metadata"]},
        "n": 2,
        "prediction": {"type": "content", "content": C["prediction"]},
        "prompt_cache_key": C["cache_key"],
        "prompt_cache_retention": "24h",
        "safety_identifier": C["safety"],
        "seed": 5,
        "service_tier": "auto",
        "stop": [C["stop"], "\u2603" + C["stop"]],
        "store": False,
        "stream": stream,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": C["user"],
        "tools": [],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "modalities": ["text"],
        "logit_bias": {},
        "audio": None,
        "reasoning_effort": None,
        "verbosity": None,
        "web_search_options": None,
        "functions": [],
        "function_call": "none",
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _completion_fields(stream: bool) -> dict:
    """Every completions request field of the OpenAI API, set."""
    body = {
        "model": C["model"],
        "prompt": [C["prompt"] + " " + UNICODE, C["prompt2"]],
        "best_of": 1,
        "echo": False,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "logprobs": 2,
        "max_tokens": 3,
        "n": 1,
        "presence_penalty": 0.0,
        "seed": 5,
        "stop": C["stop"],
        "stream": stream,
        "suffix": "",
        "temperature": 0.5,
        "top_p": 0.9,
        "user": C["user"],
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


REFUSED = {  # field: a value this proxy refuses (no SGP_TOOL_PARSER here: tools too); each carries a canary
    "chat": {
        "tools": [{"type": "function", "function": {"name": "f", "description": C["refused"]}}],
        "tool_choice": {"type": "function", "function": {"name": C["refused"]}},
        "functions": [{"name": C["refused"]}],
        "function_call": {"name": C["refused"]},
        "response_format": {"type": "json_schema", "json_schema": {"name": C["refused"], "schema": {}}},
        "logit_bias": {"1234": 5},
        "audio": {"voice": "alloy", "format": "wav"},
        "modalities": ["text", "audio"],
        "reasoning_effort": "high",
        "verbosity": "low",
        "web_search_options": {"search_context_size": "low"},
        "moderation": {"input": {"mode": "block"}},
    },
    "completion": {"logit_bias": {"1234": 5}, "best_of": 3, "suffix": C["refused"]},
    "message": {
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": C["refused"]}}],
        "function_call": {"name": "f", "arguments": C["refused"]},
        "audio": {"id": C["refused"]},
        "refusal": C["refused"],
    },
}


def _expected(sgt, messages: list[dict] | None = None, prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and client-token mask, worked out here (not by the proxy's renderer): the tiny model's
    template is ChatML, whose content spans are known; a raw prompt is client text but for special tokens."""
    tokenizer = sgt.renderer._tokenizer
    if prompt is not None:
        enc = tokenizer.encode(prompt, add_special_tokens=True)
        return torch.tensor(enc.ids), torch.tensor([i not in sgt.renderer.special_ids for i in enc.ids])
    text, spans = chatml([{"role": m["role"], "content": m["content"]} for m in messages], None)
    ids, mask = expected_mask(sgt.renderer, text, spans)
    return torch.tensor(ids), torch.tensor(mask)


def _rows_check(sent: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor], table: torch.Tensor) -> None:
    """Client tokens arrive as no row of the embedding table; template tokens as their own row."""
    ids, mask = expected
    assert sent.shape == (len(ids), table.shape[1])
    sent, table = sent.float(), table.float()
    exact = (sent[:, None, :] == table[None, :, :]).all(-1)  # [seq, vocab]
    assert mask.any() and not exact[mask].any(), "a client token went upstream as its plain embedding row"
    assert exact[~mask].gather(1, ids[~mask][:, None]).all()


def test_every_openai_request_field_keeps_client_text_off_the_wire(proxy, relay: RecordingRelay, tiny_sgt) -> None:
    from proxy.openai_types import ChatCompletionRequest
    from proxy.sgt import SGTRuntime

    relay.clear()
    chat, completions = proxy.url + "/v1/chat/completions", proxy.url + "/v1/completions"
    sent_prompts = []  # what each upstream request's prompt_embeds hold, in order: (ids, client mask)
    sgt = SGTRuntime.load(tiny_sgt)
    for stream in (False, True):
        body = _chat_fields(stream)
        r = requests.post(chat, json=body, timeout=60)
        assert r.status_code == 200, r.text
        sent_prompts.append([_expected(sgt, ChatCompletionRequest.model_validate(body).template_messages())])
    r = requests.post(chat, json={"model": "m", "messages": TEMPLATE_LOOKALIKES, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    sent_prompts.append([_expected(sgt, TEMPLATE_LOOKALIKES)])
    for stream in (False, True):
        body = _completion_fields(stream)
        r = requests.post(completions, json=body, timeout=60)
        assert r.status_code == 200, r.text
        sent_prompts.append([_expected(sgt, prompt=p) for p in body["prompt"]])

    # refused: a 400 naming the field, before anything is sent, without echoing the value
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    attempts = [(chat, {**base, k: v}, k) for k, v in REFUSED["chat"].items()]
    attempts += [(completions, {"model": "m", "prompt": "x", k: v}, k) for k, v in REFUSED["completion"].items()]
    attempts += [
        (
            chat,
            {"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", k: v}]},
            f"messages.1.{k}",
        )
        for k, v in REFUSED["message"].items()
    ]
    for url, body, param in attempts:
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["param"] == param and C["refused"] not in r.text

    raw = relay.sent()
    for canary in [*C.values(), UNICODE]:
        for form in {canary, canary.lower(), json.dumps(canary)[1:-1], json.dumps(canary, ensure_ascii=False)[1:-1]}:
            assert form.encode() not in raw, f"{canary} reached the upstream"
    assert b"\\u017dlu" not in raw.lower() and "Žluť".encode() not in raw
    bodies = requests_sent(relay)
    assert len(bodies) == len(sent_prompts)  # the refused requests sent nothing
    table = sgt.table
    for body, prompts in zip(bodies, sent_prompts, strict=True):
        allowed = UPSTREAM_FIELDS - {"repetition_penalty"}  # penalties are not allowed on this proxy
        assert set(body) <= allowed, set(body) - allowed
        assert body["model"] == "tiny-llama"  # the upstream's own model, not the client's name for it
        embeds = body["prompt_embeds"] if isinstance(body["prompt_embeds"], list) else [body["prompt_embeds"]]
        assert len(embeds) == len(prompts)
        for b64, prompt in zip(embeds, prompts, strict=True):
            _rows_check(decode_embeds(b64), prompt, table)
