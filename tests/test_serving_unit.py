"""In-process tests of the serving layer: the response shaper, serving, the metrics record.

Plain functions where a part stands alone; otherwise the real app in-process
(``proxy.create_app(settings)`` and Flask's test client) with the tiny SGT and
a small scripted upstream on a real socket (tests/relay.py) that keeps every
request it receives. Fast, and each one names the part it checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from proxy import create_app, metrics
from proxy.errors import UpstreamError
from proxy.openai_types import ResponseShaper
from proxy.settings import Settings
from tests.helpers import UPSTREAM_FIELDS
from tests.relay import ScriptedUpstream

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "the canary is 5150"}]


# ---- the response shaper, alone -----------------------------------------------------------------


def _completion_event(texts: list[str], finish: str | None, usage: dict | None = None) -> dict[str, Any]:
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": finish} for i, t in enumerate(texts)]
    event: dict[str, Any] = {"id": "up-1", "object": "text_completion", "created": 7, "model": "up", "choices": choices}
    if usage is not None:
        event["usage"] = usage
    return event


USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


def test_shaper_whole_chat_answer_from_a_completion() -> None:
    shaper = ResponseShaper("chat", "client-model", streamed=False)
    (answer,) = shaper.shape(_completion_event(["a", "b"], "length", USAGE))
    assert answer == {
        "id": "up-1",
        "object": "chat.completion",
        "created": 7,
        "model": "client-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "logprobs": None, "finish_reason": "length"},
            {"index": 1, "message": {"role": "assistant", "content": "b"}, "logprobs": None, "finish_reason": "length"},
        ],
        "usage": USAGE,
    }


def test_shaper_whole_completion_keeps_usage_and_says_none_when_missing() -> None:
    (answer,) = ResponseShaper("completion", "m", streamed=False).shape(_completion_event(["x"], "stop"))
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "stop"}]
    assert answer["usage"] is None  # a whole answer always has the key


def test_shaper_streamed_chat_names_the_role_once_per_choice_first() -> None:
    shaper = ResponseShaper("chat", "m", streamed=True)
    out = shaper.shape_batch([_completion_event(["He", "Hi"], None), _completion_event(["y", "!"], "length")])
    assert [e["object"] for e in out] == ["chat.completion.chunk"] * len(out)
    deltas = [(c["index"], c["delta"]) for e in out for c in e["choices"]]
    assert deltas == [
        (0, {"role": "assistant"}),
        (1, {"role": "assistant"}),
        (0, {"content": "He"}),
        (1, {"content": "Hi"}),
        (0, {"content": "y"}),
        (1, {"content": "!"}),
    ]
    assert all("usage" not in e for e in out)  # a stream's chunks carry usage only when there is some
    assert out[-1]["choices"][-1]["finish_reason"] == "length"


def test_shaper_streamed_completion_has_no_role_chunk_and_relays_the_usage_chunk() -> None:
    shaper = ResponseShaper("completion", "m", streamed=True)
    out = shaper.shape_batch([_completion_event(["a"], None), {**_completion_event([], None), "usage": USAGE}])
    assert out[0]["choices"] == [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}]
    assert out[1]["choices"] == [] and out[1]["usage"] == USAGE
    assert shaper.usage_event(USAGE) == {**out[1], "created": 7}


def test_shaper_relays_a_chat_upstreams_events_with_the_clients_model() -> None:
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": []}
    shaper = ResponseShaper("chat", "mine", streamed=True, upstream="chat")
    assert shaper.shape(event) == [{**event, "model": "mine"}]
    with pytest.raises(ValueError):
        ResponseShaper("completion", "mine", streamed=True, upstream="chat")


# ---- serving, in-process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    yield upstream
    upstream.close()


def _app(tiny_sgt: Path, scripted: ScriptedUpstream, **settings: Any) -> FlaskClient:
    full = {"sgt_path": str(tiny_sgt), "inference_service_host": scripted.url, "max_new_tokens": 12, **settings}
    return create_app(Settings(**full)).test_client()


@pytest.fixture(scope="module")
def app(tiny_sgt: Path, scripted: ScriptedUpstream) -> FlaskClient:
    return _app(tiny_sgt, scripted)


@pytest.fixture(scope="module")
def chat_app(tiny_sgt: Path, scripted: ScriptedUpstream) -> FlaskClient:
    return _app(tiny_sgt, scripted, upstream_api="chat")


def _last_sent(scripted: ScriptedUpstream) -> tuple[str, dict[str, Any]]:
    path, _, body = scripted.requests[-1]
    return path, body


def _sse(data: bytes) -> list[Any]:
    """A stream's events; the literal "[DONE]" stays a string."""
    lines = [line[6:] for line in data.decode().split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_whole_chat_sends_only_allowed_fields_and_answers_in_the_clients_model(
    app: FlaskClient, scripted: ScriptedUpstream
) -> None:
    body = {"model": "mine", "messages": MESSAGES, "temperature": 0.5, "top_p": 0.9, "seed": 3, "n": 2}
    body |= {"user": "alice-5150", "presence_penalty": 0.0}
    answer = app.post(CHAT, json=body)
    assert answer.status_code == 200, answer.text
    path, sent = _last_sent(scripted)
    assert path == COMPLETIONS
    assert set(sent) <= UPSTREAM_FIELDS
    assert {k: sent[k] for k in ("model", "temperature", "top_p", "seed", "n", "stream")} == {
        "model": scripted.model,  # the upstream's own name, asked once from /v1/models
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "n": 2,
        "stream": False,
    }
    assert "presence_penalty" not in sent  # a neutral penalty is not sent
    assert "5150" not in json.dumps(sent)  # neither the prompt nor the user name
    payload = answer.get_json()
    assert payload["model"] == "mine" and payload["object"] == "chat.completion"
    assert [c["message"]["content"] for c in payload["choices"]] == ["Hello there friend"] * 2
    assert payload["usage"]["completion_tokens"] == 6


def test_max_tokens_default_requested_and_too_many(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    assert app.post(COMPLETIONS, json={"model": "m", "prompt": "hi"}).status_code == 200
    assert _last_sent(scripted)[1]["max_tokens"] == 12  # SGP_MAX_NEW_TOKENS (the context has room)
    assert app.post(COMPLETIONS, json={"model": "m", "prompt": "hi", "max_tokens": 5}).status_code == 200
    assert _last_sent(scripted)[1]["max_tokens"] == 5
    chat = {"model": "m", "messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 4}
    assert app.post(CHAT, json=chat).status_code == 200
    assert _last_sent(scripted)[1]["max_tokens"] == 4  # max_completion_tokens wins
    sent = len(scripted.requests)
    answer = app.post(COMPLETIONS, json={"model": "m", "prompt": "hi", "max_tokens": 1_000_000})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "context_length_exceeded"
    assert answer.get_json()["error"]["param"] == "max_tokens"
    assert len(scripted.requests) == sent  # nothing went upstream


def test_a_prompt_list_is_one_upstream_request_of_many_embeds(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    answer = app.post(COMPLETIONS, json={"model": "m", "prompt": ["one", "two", "three"]})
    assert answer.status_code == 200, answer.text
    embeds = _last_sent(scripted)[1]["prompt_embeds"]
    assert isinstance(embeds, list) and len(embeds) == 3
    assert len(answer.get_json()["choices"]) == 3


def test_streamed_chat_role_chunk_usage_and_done(app: FlaskClient) -> None:
    body = {"model": "m", "messages": MESSAGES, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    answer = app.post(CHAT, json=body)
    assert answer.status_code == 200 and answer.mimetype == "text/event-stream"
    events = _sse(answer.data)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    first = {}
    for event in chunks:
        for choice in event["choices"]:
            first.setdefault(choice["index"], choice["delta"])
    assert first == {0: {"role": "assistant"}, 1: {"role": "assistant"}}
    texts = {
        i: "".join(c["delta"].get("content", "") for e in chunks for c in e["choices"] if c["index"] == i)
        for i in (0, 1)
    }
    assert texts == {0: "Hello there friend", 1: "Hello there friend"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_stop_under_a_stream_is_cut_by_the_proxy_not_sent(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    answer = app.post(COMPLETIONS, json={"model": "m", "prompt": "hi", "stop": [" fri"]})
    assert answer.status_code == 200
    assert answer.get_json()["choices"][0]["text"] == "Hello there"
    assert answer.get_json()["choices"][0]["finish_reason"] == "stop"
    sent = _last_sent(scripted)[1]
    assert "stop" not in sent and sent["stream"] is True  # a whole answer with stops is streamed from upstream


def test_chat_upstream_gets_messages_of_embeds_and_the_logprobs_flag(
    chat_app: FlaskClient, scripted: ScriptedUpstream
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": ""}, *MESSAGES],
        "logprobs": True,
        "top_logprobs": 2,
    }
    answer = chat_app.post(CHAT, json=body)
    assert answer.status_code == 200, answer.text
    path, sent = _last_sent(scripted)
    assert path == CHAT
    assert "prompt_embeds" not in sent
    assert sent["messages"][0] == {"role": "system", "content": ""}  # an empty content stays a string
    (part,) = sent["messages"][1]["content"]
    assert part["type"] == "prompt_embeds" and isinstance(part["data"], str)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert answer.get_json()["model"] == "m"


def test_upstream_errors_keep_their_status_in_openai_shape(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    scripted.status = 503
    try:
        answer = app.post(COMPLETIONS, json={"model": "m", "prompt": "hi"})
    finally:
        scripted.status = 200
    assert answer.status_code == 503
    assert set(answer.get_json()["error"]) == {"message", "type", "param", "code"}


def test_an_empty_prompt_is_a_400_before_anything_is_sent(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    sent = len(scripted.requests)
    answer = app.post(COMPLETIONS, json={"model": "m", "prompt": ""})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "empty_prompt"
    assert len(scripted.requests) == sent


# ---- metrics: the per-request record -------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_record_applies_nothing_until_flushed_and_finishes_once() -> None:
    endpoint = "/unit/record"
    in_progress = _sample("sgp_requests_in_progress")
    record = metrics.RequestRecord(endpoint)
    assert _sample("sgp_requests_in_progress") == in_progress + 1
    with record.transform():
        pass
    with pytest.raises(UpstreamError), record.upstream():
        raise UpstreamError("down", status=502)
    record.sent([{"choices": [{"index": 0, "text": "a"}]}, {"choices": [], "usage": {"completion_tokens": 9}}], True)
    assert _sample("sgp_upstream_errors_total", endpoint=endpoint, reason="http_502") == 1  # failures at once
    assert _sample("sgp_transform_duration_seconds_count", endpoint=endpoint) == 0  # waiting
    assert _sample("sgp_stream_chunks_total", endpoint=endpoint) == 0
    record.flush()
    assert _sample("sgp_transform_duration_seconds_count", endpoint=endpoint) == 1
    assert _sample("sgp_stream_chunks_total", endpoint=endpoint) == 2
    assert _sample("sgp_time_to_first_token_seconds_count", endpoint=endpoint) == 1
    assert _sample("sgp_completion_tokens_total", endpoint=endpoint) == 0  # counted when the answer is whole
    record.finish("POST", 502)
    record.finish("POST", 502)
    assert _sample("sgp_completion_tokens_total", endpoint=endpoint) == 9  # the usage, not the text chunks
    assert _sample("sgp_requests_total", endpoint=endpoint, method="POST", status="502") == 1
    assert _sample("sgp_request_duration_seconds_count", endpoint=endpoint) == 1
    assert _sample("sgp_requests_in_progress") == in_progress
    assert _sample("sgp_transform_duration_seconds_count", endpoint=endpoint) == 1  # flushed once, not twice


def test_a_served_stream_fills_every_metric_once(app: FlaskClient) -> None:
    names = [
        "sgp_transform_duration_seconds_count",
        "sgp_upstream_response_seconds_count",
        "sgp_time_to_first_token_seconds_count",
        "sgp_stream_chunks_total",
        "sgp_completion_tokens_total",
        "sgp_request_duration_seconds_count",
    ]
    before = {name: _sample(name, endpoint=COMPLETIONS) for name in names}
    ok = _sample("sgp_requests_total", endpoint=COMPLETIONS, method="POST", status="200")
    answer = app.post(COMPLETIONS, json={"model": "m", "prompt": "hi", "stream": True})
    events = _sse(answer.data)
    answer.close()  # the last byte is sent: the record is applied (call_on_close)
    after = {name: _sample(name, endpoint=COMPLETIONS) - before[name] for name in names}
    assert after == {
        "sgp_transform_duration_seconds_count": 1,
        "sgp_upstream_response_seconds_count": 1,
        "sgp_time_to_first_token_seconds_count": 1,
        "sgp_stream_chunks_total": len(events) - 1,  # [DONE] is no chunk
        "sgp_completion_tokens_total": 3,  # no usage asked: the chunks that carry text
        "sgp_request_duration_seconds_count": 1,
    }
    assert _sample("sgp_requests_total", endpoint=COMPLETIONS, method="POST", status="200") == ok + 1


def test_a_prompt_lists_transforms_are_timed_one_by_one(app: FlaskClient) -> None:
    before = _sample("sgp_transform_duration_seconds_count", endpoint=COMPLETIONS)
    with app.post(COMPLETIONS, json={"model": "m", "prompt": ["a", "b"]}) as answer:  # closed: the record applied
        assert answer.status_code == 200
    assert _sample("sgp_transform_duration_seconds_count", endpoint=COMPLETIONS) == before + 2


def test_an_upstream_failure_is_counted_by_its_reason(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    before = _sample("sgp_upstream_errors_total", endpoint=CHAT, reason="http_500")
    scripted.status = 500
    try:
        with app.post(CHAT, json={"model": "m", "messages": MESSAGES}) as answer:
            assert answer.status_code == 500
    finally:
        scripted.status = 200
    assert _sample("sgp_upstream_errors_total", endpoint=CHAT, reason="http_500") == before + 1


# ---- the upstream route, chosen once per request ---------------------------------------------------


def test_the_route_for_each_upstream_api(app: FlaskClient) -> None:
    from proxy.openai_types import ChatCompletionRequest, CompletionRequest
    from proxy.serving.route import chat_route, completions_route

    sgt = app.application.extensions["sgp.service"].sgt
    record = metrics.RequestRecord("/unit/route")
    chat = ChatCompletionRequest(model="m", messages=MESSAGES, logprobs=True, top_logprobs=1)
    prompt = sgt.renderer.render_chat(chat.template_messages())

    route = completions_route(sgt, chat, [prompt], keep_special_tokens=True)
    assert (route.path, route.shape, route.streams_whole_answers) == (COMPLETIONS, "completion", True)
    assert route.sampling["logprobs"] == 1 and route.sampling["skip_special_tokens"] is False
    fields = route.prompt_fields(record)
    assert list(fields) == ["prompt_embeds"] and fields["prompt_embeds"].tensor.shape == (len(prompt), sgt.hidden_size)

    contents = [(m["role"], sgt.renderer.render_content(m["content"])) for m in chat.template_messages()]
    route = chat_route(sgt, chat, contents)
    assert (route.path, route.shape, route.streams_whole_answers) == (CHAT, "chat", False)
    assert route.sampling["logprobs"] is True and route.sampling["top_logprobs"] == 1
    assert [m["role"] for m in route.prompt_fields(record)["messages"]] == ["user"]

    texts = CompletionRequest(model="m", prompt=["a", "b"])
    prompts = [sgt.renderer.render_text(t) for t in texts.prompts()]
    listed = completions_route(sgt, texts, prompts).prompt_fields(record)["prompt_embeds"]
    assert len(listed) == 2  # made one by one as the body is sent


def test_a_relayed_client_key_goes_upstream_only_as_a_key(app: FlaskClient, scripted: ScriptedUpstream) -> None:
    """The client's key and versions cross re-encoded from what they parse to; anything else is a 400, sent nowhere."""
    import base64

    key = base64.b64encode(bytes(range(32))).decode()
    chat = {"model": "m", "messages": MESSAGES, "max_tokens": 2}
    sent = len(scripted.requests)
    for bad in ({"x-client-public-key": "my secret note"}, {"x-client-public-key": key, "x-sgop-versions": "two"}):
        r = app.post(CHAT, json=chat, headers=bad)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_output_protection_header"
        assert "secret" not in r.get_data(as_text=True)
    assert len(scripted.requests) == sent  # nothing went upstream
    app.post(CHAT, json=chat, headers={"x-client-public-key": f"  {key} ", "x-sgop-versions": " 2 , 1"})
    headers = {name.lower(): value for name, value in scripted.requests[-1][1].items()}
    assert headers["x-client-public-key"] == key and headers["x-sgop-versions"] == "2,1"
