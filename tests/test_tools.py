"""Tool calling and reasoning end to end: the real OpenAI SDK and an agent framework, a real gunicorn
proxy, a real inference_server in scripted mode (a tiny model cannot write a call), a recording relay.

The model's chat template renders tools the Hermes/Qwen2.5 way. The scripted
server answers the texts queued with POST /script, whatever the prompt, but
still decodes and checks the prompt_embeds the proxy sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import torch
from openai import BadRequestError, OpenAI
from tokenizers import Tokenizer
from transformers import AutoTokenizer

import sgop
from inference_server.tiny_model import TOOLS_CHAT_TEMPLATE, build_tiny_model
from proxy.sgt import load_sgt_file
from sgt_tools.build import build_sgt
from tests.helpers import TINY_NAME, decode_embeds, requests_sent, start_tiny_upstream
from tests.procs import Service
from tests.relay import RecordingRelay

# Every string here is the client's: none may reach the upstream as text or as plain embedding rows.
TOOL_NAME = "lookup_forecast"
DESCRIPTION = "Forecast for a municipality today"
PROPERTY = "municipality"
PLACE = "Zanzibar-Town"
RESULT = "overcast-seventeen-degrees"
QUESTION = "Should I pack an umbrella tomorrow?"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": DESCRIPTION,
            "parameters": {
                "type": "object",
                "properties": {PROPERTY: {"type": "string", "description": "where"}},
                "required": [PROPERTY],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
USER = [{"role": "user", "content": QUESTION}]
CALL = f'<tool_call>\n{{"name": "{TOOL_NAME}", "arguments": {{"{PROPERTY}": "{PLACE}"}}}}\n</tool_call>'
TIME_CALL = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="session")
def tools_model(workdir: Path) -> Path:
    # tool signatures in a 600-token vocabulary make long prompts
    return build_tiny_model(workdir / "tiny-tools", chat_template=TOOLS_CHAT_TEMPLATE, max_position_embeddings=4096)


@pytest.fixture(scope="session")
def tools_sgt(tools_model: Path, workdir: Path) -> Path:
    return build_sgt(tools_model, workdir / "sgt_tools.pt", width=32, noise_scale=0.3)


@pytest.fixture(scope="session")
def scripted(tools_model: Path, workdir: Path) -> Iterator[Service]:
    service = start_tiny_upstream(tools_model, workdir, "--script")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def tools_relay(scripted: Service) -> Iterator[RecordingRelay]:
    recorder = RecordingRelay(scripted.port)
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def tools_proxy(launch_proxy: Callable[..., Service], tools_relay: RecordingRelay, tools_sgt: Path) -> Service:
    return launch_proxy(
        tools_relay.url, SGP_SGT_PATH=str(tools_sgt), SGP_TOOL_PARSER="hermes", SGP_MAX_NEW_TOKENS="400"
    )


@pytest.fixture(scope="session")
def tools_client(tools_proxy: Service) -> OpenAI:
    return OpenAI(base_url=tools_proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def say(upstream: Service, *answers: str) -> None:
    """Queue the scripted server's next answers (one per generated choice)."""
    requests.post(upstream.url + "/script", json={"answers": list(answers)}, timeout=10).raise_for_status()


def ask(client: OpenAI, **kw):
    return client.chat.completions.create(model="m", messages=kw.pop("messages", USER), tools=TOOLS, **kw)


# ---- calls, whole and streamed ---------------------------------------------------------------


def test_one_call(tools_client: OpenAI, scripted: Service) -> None:
    say(scripted, "Let me look that up.\n" + CALL)
    answer = ask(tools_client)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look that up."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == TOOL_NAME
    assert json.loads(call.function.arguments) == {PROPERTY: PLACE}


def test_parallel_calls(tools_client: OpenAI, scripted: Service) -> None:
    say(scripted, CALL + "\n" + TIME_CALL)
    message = ask(tools_client).choices[0].message
    assert message.content is None
    assert [c.function.name for c in message.tool_calls] == [TOOL_NAME, "get_time"]
    assert len({c.id for c in message.tool_calls}) == 2
    say(scripted, CALL + "\n" + TIME_CALL)
    single = ask(tools_client, parallel_tool_calls=False).choices[0]
    assert [c.function.name for c in single.message.tool_calls] == [TOOL_NAME]
    assert single.finish_reason == "tool_calls"


def test_streamed_calls(tools_client: OpenAI, scripted: Service) -> None:
    say(scripted, "Checking both.\n" + CALL + "\n" + TIME_CALL)
    chunks = list(ask(tools_client, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Checking both."
    fragments = [f for c in chunks if c.choices for f in c.choices[0].delta.tool_calls or ()]
    firsts = [f for f in fragments if f.id]
    assert [(f.index, f.type, f.function.name) for f in firsts] == [
        (0, "function", TOOL_NAME),
        (1, "function", "get_time"),
    ]
    later = [f for f in fragments if not f.id]
    assert later and all(f.type is None and f.function.name is None for f in later)
    arguments = ["".join(f.function.arguments or "" for f in fragments if f.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{PROPERTY: PLACE}, {}]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    say(scripted, "Checking.\n" + CALL)  # the SDK's own stream helper puts the message together the same way
    with tools_client.chat.completions.stream(model="m", messages=USER, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (TOOL_NAME, {PROPERTY: PLACE})


def test_a_plain_answer_with_tools_present(tools_client: OpenAI, scripted: Service) -> None:
    say(scripted, "No umbrella needed.\n")
    choice = ask(tools_client).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (
        "No umbrella needed.\n",
        None,
        "stop",
    )
    say(scripted, "No umbrella needed.\n")
    chunks = list(ask(tools_client, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "No umbrella needed.\n"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_text_that_only_looks_like_a_call_stays_content(tools_client: OpenAI, scripted: Service) -> None:
    broken = "<tool_call>\n{not json at all}\n</tool_call>"
    for stream in (False, True):
        say(scripted, broken)
        if stream:
            chunks = list(ask(tools_client, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == broken
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            choice = ask(tools_client).choices[0]
            assert (choice.message.content, choice.finish_reason) == (broken, "stop")


def test_tool_choice_none_renders_tools_and_parses_nothing(tools_client: OpenAI, scripted: Service) -> None:
    say(scripted, CALL)
    choice = ask(tools_client, tool_choice="none").choices[0]
    assert choice.message.content == CALL and choice.message.tool_calls is None


# ---- the second turn, and what the upstream saw ----------------------------------------------


def rendered_tokens(tools_model: Path, messages: list[dict], tools: list[dict]) -> tuple[str, list[int], list]:
    """The prompt as transformers renders it, tokenized with offsets: an oracle apart from the proxy's renderer."""
    text = AutoTokenizer.from_pretrained(tools_model).apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    encoding = Tokenizer.from_file(str(tools_model / "tokenizer.json")).encode(text, add_special_tokens=False)
    return text, encoding.ids, encoding.offsets


def test_second_turn_sends_no_tool_text_upstream(
    tools_client: OpenAI, scripted: Service, tools_relay: RecordingRelay, tools_model: Path, tools_sgt: Path
) -> None:
    say(scripted, CALL)
    first = ask(tools_client).choices[0].message
    [call] = first.tool_calls
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    say(scripted, "Overcast and dry: no umbrella.")
    tools_relay.clear()
    second = ask(tools_client, messages=history).choices[0]
    assert (second.message.content, second.finish_reason) == ("Overcast and dry: no umbrella.", "stop")

    sent = tools_relay.sent()
    secrets = [TOOL_NAME, DESCRIPTION, PROPERTY, PLACE, RESULT, QUESTION, call.id]
    assert not [s for s in secrets if s.encode() in sent]
    [body] = requests_sent(tools_relay)
    assert not set(body) & {"tools", "tool_choice", "parallel_tool_calls", "messages", "prompt", "functions"}

    # every token of a client string is obfuscated: no upstream row equals its token's plain embedding
    template_messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": TOOL_NAME, "arguments": {PROPERTY: PLACE}}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    text, ids, offsets = rendered_tokens(tools_model, template_messages, TOOLS)
    rows = decode_embeds(body["prompt_embeds"])
    assert rows.shape[0] == len(ids)
    table = load_sgt_file(tools_sgt)["embedding"].to(rows.dtype)
    plain = [bool(torch.equal(rows[i], table[token])) for i, token in enumerate(ids)]
    assert any(plain), "the template's own tokens stay plain: the check can tell"
    for secret in [*secrets[:-1], "where"]:
        start = text.find(secret)
        assert start >= 0, secret
        while start >= 0:
            end = start + len(secret)
            leaked = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and plain[i]]
            assert not leaked, f"{secret!r}: plain rows {leaked}"
            start = text.find(secret, end)


# ---- reasoning -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def reasoning_client(launch_proxy: Callable[..., Service], scripted: Service, tools_sgt: Path) -> OpenAI:
    proxy = launch_proxy(
        scripted.url,
        SGP_SGT_PATH=str(tools_sgt),
        SGP_TOOL_PARSER="hermes",
        SGP_REASONING_PARSER="qwen3",
        SGP_MAX_NEW_TOKENS="400",
    )
    return OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def test_reasoning_whole_and_streamed(reasoning_client: OpenAI, scripted: Service) -> None:
    thought = "<think>\nThe user is packing; rain decides it.\n</think>\n\n"
    say(scripted, thought + "Take the umbrella.")
    message = reasoning_client.chat.completions.create(model="m", messages=USER).choices[0].message
    assert message.content == "Take the umbrella."
    assert message.model_extra["reasoning_content"] == "\nThe user is packing; rain decides it.\n"
    say(scripted, thought + "I will check.\n" + CALL)
    chunks = list(reasoning_client.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == (
        "\nThe user is packing; rain decides it.\n"
    )
    assert "".join(d.content or "" for d in deltas) == "I will check."
    assert [f.function.name for d in deltas for f in d.tool_calls or () if f.id] == [TOOL_NAME]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# ---- what is refused, and why ----------------------------------------------------------------


def test_refusals(
    tools_client: OpenAI,
    client: OpenAI,
    launch_proxy: Callable[..., Service],
    scripted: Service,
    tools_sgt: Path,
) -> None:
    unparsed = launch_proxy(scripted.url, SGP_SGT_PATH=str(tools_sgt), SGP_MAX_NEW_TOKENS="400")  # no SGP_TOOL_PARSER
    unparsed_client = OpenAI(base_url=unparsed.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    cases = [
        (tools_client, {"tool_choice": "required"}, "guided decoding"),
        (tools_client, {"tool_choice": {"type": "function", "function": {"name": TOOL_NAME}}}, "plain text"),
        (tools_client, {"response_format": {"type": "json_object"}}, "structured output"),
        (unparsed_client, {}, "SGP_TOOL_PARSER"),  # the calls would come back as raw text
        (client, {}, "does not render tools"),  # the main test model's template has no tools section
    ]
    for target, extra, words in cases:
        with pytest.raises(BadRequestError) as info:
            ask(target, **extra)
        assert words in info.value.message
    say(scripted, CALL)  # tool_choice "none" needs no parser: the answer is not parsed
    assert ask(unparsed_client, tool_choice="none").choices[0].message.content == CALL
    key = sgop.KeyPair.generate().public_header
    with pytest.raises(BadRequestError) as info:
        ask(tools_client, extra_headers={"x-client-public-key": key})
    assert "cannot parse" in info.value.message and info.value.body["code"] == "encrypted_output_not_parsable"


# ---- output protection: parsed after decryption ----------------------------------------------


def test_calls_are_parsed_after_decryption(
    launch_proxy: Callable[..., Service], tools_model: Path, tools_sgt: Path, workdir: Path
) -> None:
    upstream = start_tiny_upstream(tools_model, workdir, "--script", "--output-protection")
    try:
        proxy = launch_proxy(
            upstream.url,
            SGP_SGT_PATH=str(tools_sgt),
            SGP_TOOL_PARSER="hermes",
            SGP_OUTPUT_DECRYPTION="True",
            SGP_MAX_NEW_TOKENS="400",
        )
        client = OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)
        say(upstream, CALL, CALL)
        [call] = ask(client).choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == (TOOL_NAME, {PROPERTY: PLACE})
        chunks = list(ask(client, stream=True))
        assert [f.function.name for c in chunks for f in c.choices[0].delta.tool_calls or () if f.id] == [TOOL_NAME]
    finally:
        upstream.stop()


# ---- an agent framework through a full tool loop ---------------------------------------------


def test_pydantic_ai_agent_runs_a_tool_loop(tools_proxy: Service, scripted: Service) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(TINY_NAME, provider=OpenAIProvider(base_url=tools_proxy.url + "/v1", api_key="sk-test"))
    agent = Agent(model)
    seen: list[str] = []

    @agent.tool_plain
    def lookup_forecast(municipality: str) -> str:
        """Forecast for a municipality today."""
        seen.append(municipality)
        return RESULT

    say(scripted, CALL, "Overcast, seventeen degrees: no umbrella.")
    result = agent.run_sync(QUESTION)
    assert seen == [PLACE]
    assert result.output == "Overcast, seventeen degrees: no umbrella."
    returns = [p for m in result.all_messages() for p in m.parts if p.part_kind == "tool-return"]
    assert [p.content for p in returns] == [RESULT]


@pytest.mark.parametrize(
    ("parser", "answer"),
    [
        ("llama3_json", f'{{"name": "{TOOL_NAME}", "parameters": {{"{PROPERTY}": "{PLACE}"}}}}'),
        ("mistral", f'Sure. [TOOL_CALLS][{{"name": "{TOOL_NAME}", "arguments": {{"{PROPERTY}": "{PLACE}"}}}}]'),
    ],
)
def test_other_tool_parsers(
    parser: str,
    answer: str,
    launch_proxy: Callable[..., Service],
    tools_relay: RecordingRelay,
    scripted: Service,
    tools_sgt: Path,
) -> None:
    proxy = launch_proxy(tools_relay.url, SGP_SGT_PATH=str(tools_sgt), SGP_TOOL_PARSER=parser, SGP_MAX_NEW_TOKENS="400")
    client = OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    say(scripted, answer)
    tools_relay.clear()
    choice = ask(client).choices[0]
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (TOOL_NAME, {PROPERTY: PLACE})
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ("Sure." if parser == "mistral" else None)
    [body] = requests_sent(tools_relay)
    assert body.get("skip_special_tokens", True) is (parser != "mistral")  # mistral's [TOOL_CALLS] is special


def test_a_reasoning_parser_refuses_relayed_ciphertext(reasoning_client: OpenAI) -> None:
    key = sgop.KeyPair.generate().public_header
    with pytest.raises(BadRequestError) as info:
        reasoning_client.chat.completions.create(model="m", messages=USER, extra_headers={"x-client-public-key": key})
    assert "cannot parse reasoning" in info.value.message


def test_readme_tool_calling_example_runs(tools_proxy: Service, scripted: Service) -> None:
    """The README's example, as written, against the proxy and the scripted server, with the example's script."""
    import re
    import subprocess
    import sys

    from tests.procs import ROOT

    readme = (ROOT / "README.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tool_call_id" in b]
    assert code.strip() in (ROOT / "examples" / "tool_calling.py").read_text()
    say(scripted, *json.loads((ROOT / "examples" / "tool_calling_script.json").read_text()))
    code = code.replace("http://127.0.0.1:8600/v1", tools_proxy.url + "/v1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tool_calls 'I will look that up.'",
        "calling get_weather for Paris",
        "stop It is sunny in Paris, 21 °C: no umbrella needed.",
    ]


def test_scripted_server_still_checks_prompt_embeds(scripted: Service) -> None:
    from proxy.upstream import encode_prompt_embeds

    url = scripted.url + "/v1/completions"
    say(scripted, "scripted text")
    bad = requests.post(url, json={"model": TINY_NAME, "prompt_embeds": encode_prompt_embeds(torch.zeros(3, 7))})
    assert bad.status_code == 400  # hidden size 7 is not the model's 64: refused before any answer is taken
    good = requests.post(url, json={"model": TINY_NAME, "prompt_embeds": encode_prompt_embeds(torch.zeros(3, 64))})
    assert good.json()["choices"][0]["text"] == "scripted text"
    assert requests.post(scripted.url + "/script", json={"answers": "x"}, timeout=10).status_code == 400


def test_each_choice_is_parsed_on_its_own(tools_client: OpenAI, scripted: Service) -> None:
    for stream in (False, True):
        say(scripted, CALL, "Just text.")  # choice 0 calls, choice 1 answers
        if not stream:
            choices = sorted(ask(tools_client, n=2).choices, key=lambda c: c.index)
            assert [c.finish_reason for c in choices] == ["tool_calls", "stop"]
            assert choices[0].message.tool_calls[0].function.name == TOOL_NAME
            assert (choices[1].message.content, choices[1].message.tool_calls) == ("Just text.", None)
            continue
        chunks = list(ask(tools_client, n=2, stream=True))
        by_choice: dict[int, list] = {0: [], 1: []}
        for chunk in chunks:
            for choice in chunk.choices:
                by_choice[choice.index].append(choice)
        names = [f.function.name for c in by_choice[0] for f in c.delta.tool_calls or () if f.id]
        assert names == [TOOL_NAME] and by_choice[0][-1].finish_reason == "tool_calls"
        assert "".join(c.delta.content or "" for c in by_choice[1]) == "Just text."
        assert by_choice[1][-1].finish_reason == "stop" and not any(c.delta.tool_calls for c in by_choice[1])


def test_stop_strings_cut_the_text_before_it_is_parsed(tools_client: OpenAI, scripted: Service) -> None:
    """stop is applied by the proxy to the plain text, then the parser runs (a whole answer is streamed from the
    upstream then: the merged answer keeps the calls and the reasoning)."""
    for stream in (False, True):
        say(scripted, "Checking.\n" + CALL + "\nSTOP-HERE and text the client must not get")
        if not stream:
            choice = ask(tools_client, stop=["STOP-HERE"]).choices[0]
            assert (choice.message.content, choice.finish_reason) == ("Checking.", "tool_calls")
            [call] = choice.message.tool_calls
            assert (call.function.name, json.loads(call.function.arguments)) == (TOOL_NAME, {PROPERTY: PLACE})
            continue
        chunks = list(ask(tools_client, stop=["STOP-HERE"], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking."
        assert [f.function.name for c in chunks for f in c.choices[0].delta.tool_calls or () if f.id] == [TOOL_NAME]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stop_with_reasoning_whole(reasoning_client: OpenAI, scripted: Service) -> None:
    say(scripted, "<think>brief</think>Take it. STOP-HERE no more")
    message = reasoning_client.chat.completions.create(model="m", messages=USER, stop="STOP-HERE").choices[0].message
    assert message.content == "Take it. " and message.model_extra["reasoning_content"] == "brief"
