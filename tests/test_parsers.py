"""Tool-call and reasoning parsers: whole answers, streams split every way, and text that only looks like a call."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from proxy.parsers import (
    Delta,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    OutputParser,
    ThinkReasoningParser,
    merge_tool_calls,
    parse_whole,
)


def stream(parser: OutputParser, pieces: list[str]) -> list[Delta]:
    deltas = [parser.feed(piece) for piece in pieces]
    deltas.append(parser.finish())
    return deltas


def joined(deltas: list[Delta]) -> Delta:
    total = Delta()
    for delta in deltas:
        total.add(delta)
    return total


def splits(text: str, seed: int) -> list[list[str]]:
    """The text one character at a time, whole, and cut at random places."""
    rng = random.Random(seed)
    ways = [list(text), [text], [text[: len(text) // 2], text[len(text) // 2 :]]]
    for _ in range(6):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)]
        ways.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return ways


def summary(delta: Delta) -> tuple[str, str, list[tuple[str, str]]]:
    """Content, reasoning and (name, arguments) of each call: what must not depend on how the text was cut."""
    calls = merge_tool_calls(delta.tool_calls)
    return delta.content, delta.reasoning, [(c.name, c.arguments) for c in calls]


def check_stream_equals_whole(text: str, tool_parser: str | None, reasoning_parser: str | None = None) -> Delta:
    whole = parse_whole(OutputParser(tool_parser, reasoning_parser, streamed=False), text)
    for seed, pieces in enumerate(splits(text, 0)):
        deltas = stream(OutputParser(tool_parser, reasoning_parser), pieces)
        assert summary(joined(deltas)) == summary(whole), (seed, pieces)
        check_fragment_shape(deltas)
    return whole


def check_fragment_shape(deltas: list[Delta]) -> None:
    """Each call's first fragment carries id and name; later ones carry only arguments."""
    seen: set[int] = set()
    for delta in deltas:
        for fragment in delta.tool_calls:
            if fragment.index in seen:
                assert fragment.id is None and fragment.name is None
            else:
                assert fragment.index == len(seen), "indices count up from 0"
                assert fragment.id and fragment.name
                seen.add(fragment.index)


WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


# ---- hermes ----------------------------------------------------------------------------------


def test_hermes_one_call() -> None:
    whole = check_stream_equals_whole(f"<tool_call>\n{WEATHER}\n</tool_call>", "hermes")
    assert whole.content == ""
    [call] = merge_tool_calls(whole.tool_calls)
    assert call.name == "get_weather" and call.id.startswith("call_") and len(call.id) > 20
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}


def test_hermes_text_before_a_call_stays_content() -> None:
    whole = check_stream_equals_whole(f"Let me check the weather.\n\n<tool_call>\n{WEATHER}\n</tool_call>", "hermes")
    assert whole.content == "Let me check the weather."
    assert [c.name for c in merge_tool_calls(whole.tool_calls)] == ["get_weather"]


def test_hermes_parallel_calls_get_distinct_ids_and_indices() -> None:
    text = (
        f"<tool_call>\n{WEATHER}\n</tool_call>\n"
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call>'
    )
    whole = check_stream_equals_whole(text, "hermes")
    calls = merge_tool_calls(whole.tool_calls)
    assert [c.name for c in calls] == ["get_weather", "get_time", "noop"]
    assert len({c.id for c in calls}) == 3
    assert [json.loads(c.arguments) for c in calls][1:] == [{"zone": "Europe/Paris"}, {}]
    assert whole.content == ""


def test_hermes_streams_arguments_in_fragments_after_the_name() -> None:
    parser = OutputParser("hermes")
    deltas = stream(parser, list(f"<tool_call>\n{WEATHER}\n</tool_call>"))
    fragments = [f for d in deltas for f in d.tool_calls]
    assert fragments[0].name == "get_weather" and fragments[0].id and fragments[0].arguments == "{"
    assert len(fragments) > 5  # the arguments came as they were generated
    assert "".join(f.arguments for f in fragments) == '{"city": "Paris", "unit": "celsius"}'
    assert fragments[0].as_dict() == {
        "index": 0,
        "id": fragments[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{"},
    }
    assert fragments[1].as_dict() == {"index": 0, "function": {"arguments": fragments[1].arguments}}
    assert parser.called


def test_hermes_no_call_is_plain_text_to_the_last_character() -> None:
    for text in ["Paris is the capital.\n\n", "  spaced  ", "a < b and c > d", "<tool", "x <tool_cal", "\n"]:
        whole = check_stream_equals_whole(text, "hermes")
        assert whole.content == text and not whole.tool_calls


@pytest.mark.parametrize(
    "bad",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',
        '<tool_call>\n["name", "f"]\n</tool_call>',
        "<tool_call>",
        "<tool_call>\n</tool_call>",
        '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
        'Sure: <tool_call>{"name": 3}</tool_call> done',
    ],
)
def test_hermes_text_that_only_looks_like_a_call_stays_content(bad: str) -> None:
    whole = check_stream_equals_whole(bad, "hermes")
    assert whole.content == bad and not whole.tool_calls


def test_hermes_a_bad_call_next_to_a_good_one() -> None:
    text = f"<tool_call>\n{{oops\n</tool_call>\n<tool_call>\n{WEATHER}\n</tool_call>"
    whole = check_stream_equals_whole(text, "hermes")
    assert whole.content == "<tool_call>\n{oops\n</tool_call>"
    assert [(c.name) for c in merge_tool_calls(whole.tool_calls)] == ["get_weather"]


def test_hermes_an_answer_cut_inside_a_call_that_parses_is_a_call() -> None:
    whole = check_stream_equals_whole(f"<tool_call>\n{WEATHER}\n", "hermes")
    assert [c.name for c in merge_tool_calls(whole.tool_calls)] == ["get_weather"]


def test_an_answer_cut_inside_arguments_is_content_whole_and_an_incomplete_call_streamed() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    whole = parse_whole(OutputParser("hermes", streamed=False), text)
    assert whole.content == text and not whole.tool_calls
    streamed = joined(stream(OutputParser("hermes"), list(text)))  # the name went out before the cut
    assert [(c.name, c.arguments) for c in merge_tool_calls(streamed.tool_calls)] == [("get_weather", '{"city": "Pa')]


@pytest.mark.parametrize(
    "arguments",
    [
        {"code": "if (x) { return {}; }", "note": "a } and a { in strings"},
        {"nested": {"deep": {"list": [1, {"k": "v"}]}}},
        {"unicode": "café – ☕ 東京", "quote": 'say "hi"', "slash": "a\\b"},
        {"tag": "</tool_call is not the end tag"},
    ],
)
def test_hermes_arguments_survive_braces_quotes_and_unicode(arguments: dict) -> None:
    for dump in (json.dumps(arguments), json.dumps(arguments, ensure_ascii=False), json.dumps(arguments, indent=2)):
        text = f'<tool_call>\n{{"name": "f", "arguments": {dump}}}\n</tool_call>'
        whole = check_stream_equals_whole(text, "hermes")
        [call] = merge_tool_calls(whole.tool_calls)
        assert json.loads(call.arguments) == arguments


def test_hermes_accepts_other_key_orders_and_string_arguments() -> None:
    for body, expected in [
        ('{"arguments": {"a": 1}, "name": "f"}', {"a": 1}),
        ('{"name": "f", "parameters": {"a": 1}}', {"a": 1}),
        ('{"name": "f", "arguments": "{\\"a\\": 1}"}', {"a": 1}),
        ('{"name": "f"}', {}),
    ]:
        whole = check_stream_equals_whole(f"<tool_call>{body}</tool_call>", "hermes")
        [call] = merge_tool_calls(whole.tool_calls)
        assert (call.name, json.loads(call.arguments)) == ("f", expected)


def test_hermes_tag_split_across_pieces() -> None:
    pieces = [
        "Checking.",
        "<",
        "tool",
        "_",
        "call",
        ">\n",
        '{"name": "f", ',
        '"arguments": {"x": 1}}',
        "\n</",
        "tool_call",
        ">",
    ]
    deltas = stream(OutputParser("hermes"), pieces)
    total = joined(deltas)
    assert total.content == "Checking."
    assert [(c.name, c.arguments) for c in merge_tool_calls(total.tool_calls)] == [("f", '{"x": 1}')]
    assert "<" not in total.content


def test_hermes_whitespace_between_calls_and_text_after_them() -> None:
    text = f"<tool_call>{WEATHER}</tool_call>\n\n  \n<tool_call>{WEATHER}</tool_call>\nI will wait.\n"
    whole = check_stream_equals_whole(text, "hermes")
    assert whole.content == "\nI will wait."
    assert len(merge_tool_calls(whole.tool_calls)) == 2


def test_ids_are_fresh_per_answer() -> None:
    ids = {
        merge_tool_calls(parse_whole(OutputParser("hermes"), f"<tool_call>{WEATHER}</tool_call>").tool_calls)[0].id
        for _ in range(50)
    }
    assert len(ids) == 50


# ---- llama3_json and mistral -----------------------------------------------------------------


def test_llama3_json_calls() -> None:
    for text in [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '  {"name": "get_weather", "arguments": {"city": "Paris"}}',
    ]:
        whole = check_stream_equals_whole(text, "llama3_json")
        assert whole.content == ""
        [call] = merge_tool_calls(whole.tool_calls)
        assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})


def test_llama3_json_several_calls() -> None:
    whole = check_stream_equals_whole(
        '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}', "llama3_json"
    )
    assert [(c.name, c.arguments) for c in merge_tool_calls(whole.tool_calls)] == [("a", '{"x": 1}'), ("b", "{}")]


@pytest.mark.parametrize(
    "text",
    [
        "Paris is sunny.",
        '{"weather": "sunny"}',
        '{"name": "a", "parameters": {"x": 1}} and more',
        "{broken",
        "",
        "<|py",
    ],
)
def test_llama3_json_plain_answers(text: str) -> None:
    whole = check_stream_equals_whole(text, "llama3_json")
    assert whole.content == text and not whole.tool_calls


def test_mistral_list_and_name_forms() -> None:
    for text in [
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "b", "arguments": {}}]',
        '[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]b{}',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]b[ARGS]{}',
    ]:
        whole = check_stream_equals_whole(text, "mistral")
        calls = merge_tool_calls(whole.tool_calls)
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("b", {})]
        assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)


def test_mistral_text_before_and_broken_calls() -> None:
    whole = check_stream_equals_whole('Sure. [TOOL_CALLS][{"name": "f", "arguments": {}}]', "mistral")
    assert whole.content == "Sure." and len(whole.tool_calls) == 1
    for bad in ["[TOOL_CALLS][{oops", "[TOOL_CALLS]", "[TOOL_CALLS] 42", "no calls [TOOL"]:
        whole = check_stream_equals_whole(bad, "mistral")
        assert whole.content == bad and not whole.tool_calls


# ---- reasoning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("<think>\nThe user wants Paris.\n</think>\n\nParis.", "\nThe user wants Paris.\n", "Paris."),
        ("The user wants Paris.</think>Paris.", "The user wants Paris.", "Paris."),  # <think> was in the prompt
        ("<think>cut off before the end", "cut off before the end", ""),
        ("no tags at all", "no tags at all", ""),  # as vLLM: thinking never closed
        ("<think></think>Just the answer.", "", "Just the answer."),
        ("  <think>a</think>b</think>c", "a", "b</think>c"),
        ("", "", ""),
    ],
)
def test_think_reasoning(text: str, reasoning: str, content: str) -> None:
    whole = check_stream_equals_whole(text, None, "deepseek_r1")
    assert (whole.reasoning, whole.content) == (reasoning, content)


def test_reasoning_already_closed_by_the_prompt_is_content() -> None:
    parser = ThinkReasoningParser(reasoning_ended=True)
    assert parser.feed("Paris.").content == "Paris." and parser.finish().content == ""


def test_reasoning_then_a_tool_call() -> None:
    text = f"<think>I need the weather.</think>\n\nOne moment.\n<tool_call>\n{WEATHER}\n</tool_call>"
    whole = check_stream_equals_whole(text, "hermes", "qwen3")
    assert whole.reasoning == "I need the weather."
    assert whole.content == "One moment."
    assert [c.name for c in merge_tool_calls(whole.tool_calls)] == ["get_weather"]


def test_a_call_inside_the_thinking_is_reasoning() -> None:
    text = f"<think>maybe <tool_call>{WEATHER}</tool_call>?</think>No call."
    whole = check_stream_equals_whole(text, "hermes", "qwen3")
    assert whole.content == "No call." and not whole.tool_calls and "<tool_call>" in whole.reasoning


def test_parsers_hold_back_only_possible_tags() -> None:
    parser = HermesToolParser()
    assert parser.feed("Hello <tool").content == "Hello"
    assert parser.feed("box>").content == " <toolbox>"
    reasoning = ThinkReasoningParser()
    assert reasoning.feed("thinking </thi").reasoning == "thinking "
    assert reasoning.feed("nk>answer").content == "answer"
    assert Llama3JsonToolParser().feed("Hi").content == "Hi"
    assert MistralToolParser().feed("Hi [TOOL").content == "Hi"
