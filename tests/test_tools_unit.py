"""Tool-calling request models and the response shaper with parsers, without processes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from inference_server.script import Script, pieces_of
from proxy.openai_types import ChatCompletionRequest, ResponseShaper, request_error
from proxy.parsers import OutputParser
from proxy.settings import Settings, SettingsError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def parse(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **body})


def refused(**body) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as info:
        parse(**body)
    error = request_error(info.value)
    assert error.status == 400
    return error.param, str(error)


def test_tools_and_a_second_turn_are_accepted_and_templated() -> None:
    request = parse(
        tools=TOOLS,
        tool_choice="auto",
        parallel_tool_calls=True,
        messages=[
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ],
    )
    assert request.tools_enabled() and request.uses_tools()
    assert request.template_tools() == TOOLS
    assert request.template_messages()[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"},
    ]


def test_arguments_that_are_not_a_json_object_reach_the_template_as_sent() -> None:
    bad = {**CALL, "function": {"name": "f", "arguments": "{not json"}}
    request = parse(messages=[*USER, {"role": "assistant", "content": "", "tool_calls": [bad]}])
    assert request.template_messages()[1]["tool_calls"][0]["function"]["arguments"] == "{not json"
    assert request.uses_tools() and not request.tools_enabled()


def test_tool_choice_none_renders_the_tools_but_parses_nothing() -> None:
    request = parse(tools=TOOLS, tool_choice="none")
    assert request.template_tools() == TOOLS and not request.tools_enabled()


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice", "guided decoding"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "tool_choice",
            "plain text",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among",
        ),
        ({"tool_choice": "auto"}, "tool_choice", "needs tools"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
        ({"response_format": {"type": "json_object"}}, "response_format", "structured output"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name", ""),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools.0.function.name", ""),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type", ""),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "same name"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", ""),
        ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages.1", "tool_call_id"),
        ({"messages": [*USER, {"role": "tool", "tool_call_id": "c"}]}, "messages.1", "content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}, "messages.0", "only assistant"),
        ({"messages": [{"role": "assistant", "tool_calls": [{**CALL, "type": "other"}]}]}, None, ""),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]}, None, ""),
    ],
)
def test_bad_tool_fields_are_400s(body: dict, param: str | None, words: str) -> None:
    got_param, message = refused(**body)
    if param is not None:
        assert got_param is not None and got_param.startswith(param)
    assert words in message


def test_response_format_text_is_fine() -> None:
    assert parse(response_format={"type": "text"}).response_format.type == "text"


def test_parser_settings() -> None:
    settings = Settings.from_env({"SGP_TOOL_PARSER": "hermes", "SGP_REASONING_PARSER": "qwen3"})
    assert (settings.tool_parser, settings.reasoning_parser) == ("hermes", "qwen3")
    with pytest.raises(SettingsError, match="SGP_TOOL_PARSER"):
        Settings.from_env({"SGP_TOOL_PARSER": "gpt"})
    with pytest.raises(SettingsError, match="SGP_REASONING_PARSER"):
        Settings.from_env({"SGP_REASONING_PARSER": "o1"})
    with pytest.raises(SettingsError, match="SGP_UPSTREAM_API=completions"):
        Settings.from_env({"SGP_TOOL_PARSER": "hermes", "SGP_UPSTREAM_API": "chat"})


# ---- the shaper with parsers -----------------------------------------------------------------


def upstream_events(text: str, pieces: list[str] | None = None, finish: str = "stop") -> list[dict]:
    pieces = pieces if pieces is not None else [text]
    events = [
        {"id": "cmpl-1", "created": 1, "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]}
        for p in pieces
    ]
    events[-1]["choices"][0]["finish_reason"] = finish
    return events


def shaper(streamed: bool, tools: str | None = "hermes", reasoning: str | None = None, **kw) -> ResponseShaper:
    return ResponseShaper(
        "chat", "m", streamed, parsers=lambda: OutputParser(tools, reasoning, streamed=streamed), **kw
    )


ANSWER = (
    'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def test_whole_answer_with_calls() -> None:
    [body] = shaper(False).shape(upstream_events(ANSWER)[0])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Checking." and "reasoning_content" not in message
    calls = message["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}),
        ("function", "get_time", {}),
    ]
    assert calls[0]["id"] != calls[1]["id"] and all(c["id"].startswith("call_") for c in calls)


def test_whole_answer_only_calls_has_null_content_and_a_plain_one_stays_plain() -> None:
    [body] = shaper(False).shape(upstream_events(ANSWER.removeprefix("Checking.\n"))[0])
    assert body["choices"][0]["message"]["content"] is None
    [body] = shaper(False).shape(upstream_events("Sunny.")[0])
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Sunny."},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    [body] = shaper(False, single_call=True).shape(upstream_events(ANSWER)[0])
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["get_weather"]


def test_streamed_calls_in_openai_delta_shape() -> None:
    shape = shaper(True)
    chunks = shape.shape_batch(upstream_events(ANSWER, pieces_of(ANSWER)))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    content = "".join(d.get("content", "") for d in deltas)
    fragments = [f for d in deltas for f in d.get("tool_calls", [])]
    assert content == "Checking."
    firsts = [f for f in fragments if "id" in f]
    assert [(f["index"], f["type"], f["function"]["name"]) for f in firsts] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    for index, expected in [(0, {"city": "Paris"}), (1, {})]:
        args = "".join(f["function"]["arguments"] for f in fragments if f["index"] == index)
        assert json.loads(args) == expected
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments if "id" not in f
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("tool_calls") == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_streamed_reasoning_then_content() -> None:
    text = "<think>Paris is in France.</think>\n\nParis is sunny."
    chunks = shaper(True, tools=None, reasoning="deepseek_r1").shape_batch(upstream_events(text, pieces_of(text)))
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Paris is in France."
    assert "".join(d.get("content") or "" for d in deltas) == "Paris is sunny."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    [body] = shaper(False, tools=None, reasoning="deepseek_r1").shape(upstream_events(text)[0])
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Paris is sunny.",
        "reasoning_content": "Paris is in France.",
    }


def test_usage_event_passes_and_held_back_pieces_send_nothing() -> None:
    shape = shaper(True)
    assert len(shape.shape(upstream_events("x", ["<tool"], finish=None)[0])) == 1  # only the role chunk
    usage = {"id": "cmpl-1", "created": 1, "choices": [], "usage": {"prompt_tokens": 1}}
    assert shape.shape(usage)[0]["usage"] == {"prompt_tokens": 1}


def test_script_pieces_and_order() -> None:
    assert pieces_of(ANSWER)[:3] == ["Chec", "king", "."]
    assert "".join(pieces_of(ANSWER)) == ANSWER and "<tool_call>" not in pieces_of(ANSWER)
    script = Script(["a", "b"])
    script.push(["q"])
    assert [script.take() for _ in range(4)] == ["q", "a", "b", "a"]
    assert Script().take() is None


# ---- the mask over what the template renders from tools --------------------------------------

SECRET_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_forecast",
            "description": "Forecast for a municipality",
            "parameters": {
                "type": "object",
                "properties": {
                    "municipality": {"type": "string", "description": "where", "enum": ["Zanzibar", "Quito"]},
                    "type": {"type": "integer"},  # a property may be called "type"
                },
                "required": ["municipality"],
                "x-internal-note": "vendor extension",
            },
        },
    }
]
SECRET_MESSAGES = [
    {"role": "user", "content": "umbrella?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "lookup_forecast", "arguments": {"municipality": "Zanzibar", "type": "sedan"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_9", "content": "overcast"},
]
SECRETS = [
    "lookup",
    "forecast",
    "municipality",
    "Zanzibar",
    "Quito",
    "where",
    "sedan",
    "overcast",
    "umbrella",
    "x-internal",
    "vendor",
]

# Hermes-2-Pro's way: the template walks the schema itself (properties | items, param.type)
WALKING_TEMPLATE = (
    "{%- for tool in tools %}{{- tool.function.name }}("
    "{%- for name, spec in tool.function.parameters.properties | items %}{{- name + ': ' + spec.type }}, {% endfor %}"
    "){{- '\\n' }}{%- endfor %}"
    "{%- for m in messages %}{{- m.role + ': ' }}{%- if m.content %}{{- m.content }}{%- endif %}"
    "{%- for c in m.tool_calls or [] %}{%- for k, v in c.function.arguments | items %}{{- k + '=' + v }} "
    "{%- endfor %}{%- endfor %}{{- '\\n' }}{%- endfor %}"
)


@pytest.mark.parametrize("template", ["tools", "walking"])
def test_every_tool_string_is_masked(template: str, tiny_sgt) -> None:
    from inference_server.tiny_model import TOOLS_CHAT_TEMPLATE
    from proxy.sgt import PromptRenderer, load_sgt_file

    tok = load_sgt_file(tiny_sgt)["tokenizer"]
    source = TOOLS_CHAT_TEMPLATE if template == "tools" else WALKING_TEMPLATE
    renderer = PromptRenderer(tok["tokenizer_json"], source, tok.get("special_tokens", {}))
    prompt = renderer.render_chat(SECRET_MESSAGES, tools=SECRET_TOOLS)
    whole = renderer.decode(prompt.ids.tolist())
    plain = renderer.decode(prompt.ids[~prompt.mask].tolist())
    rendered = [secret for secret in SECRETS if secret in whole]
    assert rendered == (
        SECRETS
        if template == "tools"
        else ["lookup", "forecast", "municipality", "Zanzibar", "sedan", "overcast", "umbrella"]
    )
    assert not [secret for secret in rendered if secret in plain]
    assert not bool(prompt.mask.all()), "located exactly: the template's own text stays plain"
    assert "string" in plain or template == "tools"  # a schema's vocabulary ("type": "string") is not client text


def test_tools_and_call_arguments_count_against_the_character_limit() -> None:
    from proxy import limits
    from proxy.errors import BadRequestError as ProxyBadRequest

    settings = Settings.from_env({"SGP_MAX_CHARS_PER_TOKEN": "1"})
    small = parse(tools=TOOLS)
    limits.check_chat(small, settings, context=1000)
    huge_tool = [{"type": "function", "function": {"name": "f", "description": "x" * 2000}}]
    huge_call = [
        *USER,
        {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "1" * 2000}}]},
    ]
    for request in (parse(tools=huge_tool), parse(messages=huge_call)):
        with pytest.raises(ProxyBadRequest) as info:
            limits.check_chat(request, settings, context=1000)
        assert info.value.code == "context_length_exceeded"
