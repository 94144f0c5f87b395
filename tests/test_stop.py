"""Stop sequences are applied by the proxy, never sent upstream: whole and streamed, per choice, across pieces."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from proxy.stop import StopMatcher, StopSequences
from tests.helpers import chat_text, error_shape, requests_sent
from tests.procs import Service, start_inference_server
from tests.relay import RecordingRelay

QUESTION = "Tell me about the secret project nightingale"


# ---- the matcher ------------------------------------------------------------------------------


def _whole(text: str, stops: list[str]) -> tuple[str, bool]:
    """The reference: cut where the first stop string to be complete begins (the earliest end, then start)."""
    hits = [(i + len(s), i) for s in stops if s and (i := text.find(s)) >= 0]
    return (text[: min(hits)[1]], True) if hits else (text, False)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)] or [""]


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet="ab\u00e9\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab\u00e9\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_pieces_give_what_the_whole_text_gives(text: str, stops: list[str], cuts: list[int]) -> None:
    matcher = StopMatcher(stops)
    sent = "".join(matcher.feed(piece) for piece in _pieces(text, cuts))
    if not matcher.stopped:
        sent += matcher.flush()
    assert (sent, matcher.stopped) == _whole(text, stops)


def test_a_match_across_three_pieces_is_held_back_then_dropped() -> None:
    matcher = StopMatcher(["STOP!"])
    assert matcher.feed("hello S") == "hello "  # "S" may begin the stop string: held back
    assert matcher.feed("TO") == ""
    assert matcher.feed("P! and more") == "" and matcher.stopped
    assert matcher.feed("later") == "" and matcher.flush() == ""
    other = StopMatcher(["STOP!"])
    assert other.feed("a ST") == "a " and other.feed("ART") == "START"  # not a match after all: released


def test_choices_stop_on_their_own() -> None:
    stops = StopSequences(["\n"], choices=2)
    assert stops.apply(0, "one\ntwo", last=False) == ("one", True)
    assert not stops.finished and stops.stopped(0) and not stops.stopped(1)
    assert stops.apply(1, "three", last=False) == ("three", False)
    assert stops.apply(1, " four\n", last=True) == (" four", True)
    assert stops.finished


# ---- through the proxy --------------------------------------------------------------------------


def _completion_text(client: OpenAI, stream: bool, **args) -> tuple[list[str], list[str]]:
    args = {"model": "m", "prompt": QUESTION, "max_tokens": 12, **args}
    if not stream:
        answer = client.completions.create(**args)
        return [c.text for c in answer.choices], [c.finish_reason for c in answer.choices]
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in client.completions.create(**args, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(reasons)]


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_the_greedy_answer(exact_proxy: Service, kind: str, stream: bool) -> None:
    """With a no-noise SGT and greedy decoding the answer is fixed: stop strings taken from it cut it there."""
    client = OpenAI(base_url=exact_proxy.url + "/v1", api_key="x", max_retries=0, timeout=60)
    ask = chat_text if kind == "chat" else _completion_text
    (full,), _ = ask(client, False, temperature=0)
    assert len(full) >= 6, full
    for stop in (full[3:6], [full[4:], "\u2603never"], full[:2]):
        expected = full[: full.find(stop if isinstance(stop, str) else stop[0])]
        texts, reasons = ask(client, stream, temperature=0, stop=stop, n=2)
        assert texts == [expected, expected] and reasons == ["stop", "stop"]
    texts, reasons = ask(client, stream, temperature=0, stop="\u2603never")  # no match: all of it
    assert texts == [full]


@pytest.fixture(scope="module")
def slow_null(workdir: Path) -> Iterator[Service]:
    """400 tokens of " tok", 20 ms each: 8 s in all unless the request is cut off."""
    service = start_inference_server(
        workdir, "--null-tokens", "400", "--hidden-size", "64", "--token-delay", "0.02", "--served-model-name", "null"
    )
    yield service
    service.stop()


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_an_answer_that_stopped_closes_the_upstream_request(
    launch_proxy, slow_null: Service, path: str, stream: bool
) -> None:
    """Streamed, or whole (then streamed from the upstream all the same): cut off once the stop string came."""
    proxy = launch_proxy(slow_null.url, SGP_UPSTREAM_MODEL="null", SGP_MAX_NEW_TOKENS="400")
    before = slow_null.log().count("status=499")
    # n=1: inference_server generates the choices of n>1 one after the other (vLLM: side by side)
    body = {"model": "m", "stream": stream, "stop": ["ok to"]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"})
    started = time.monotonic()
    r = requests.post(proxy.url + path, json=body, timeout=30, stream=stream)
    if stream:
        lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == b"data: [DONE]"
        events = [json.loads(line[6:]) for line in lines[:-1]]
    else:
        assert r.status_code == 200, r.text
        events = [r.json()]
        assert events[0]["object"] == ("chat.completion" if "chat" in path else "text_completion")
    elapsed = time.monotonic() - started
    text, reason = "", None
    for event in events:
        for c in event["choices"]:
            text += c.get("text") or (c.get("delta") or c.get("message") or {}).get("content") or ""
            reason = c["finish_reason"] or reason
    assert (text, reason) == (" t", "stop")  # " tok tok ...": "ok to" spans two pieces
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] >= 2 and usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert elapsed < 4  # the whole answer takes 8 s
    deadline = time.monotonic() + 2
    while slow_null.log().count("status=499") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow_null.log().count("status=499") > before, "the upstream request went on after every choice stopped"


def test_stop_is_never_sent_upstream(client: OpenAI, relay: RecordingRelay) -> None:
    relay.clear()
    client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3, stop=["Quetzal-stop-77"]
    )
    client.completions.create(model="m", prompt="x", max_tokens=3, stop="Quetzal-stop-77", stream=False)
    assert b"Quetzal" not in relay.sent()
    assert all("stop" not in body for body in requests_sent(relay)) and len(requests_sent(relay)) == 2


def test_stop_with_a_client_key_is_a_400_that_says_why(proxy: Service, relay: RecordingRelay) -> None:
    relay.clear()
    client_key = base64.b64encode(bytes(range(32))).decode()  # any key: the proxy cannot read what it locks
    r = requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "\n"},
        headers={"x-client-public-key": client_key},
        timeout=30,
    )
    error = error_shape(r, 400)
    assert error["param"] == "stop" and "x-client-public-key" in error["message"]
    assert relay.sent() == b""


def test_stop_after_decryption(launch_proxy, protected_upstream: Service, exact_sgt: Path, exact_proxy) -> None:
    """With SGP_OUTPUT_DECRYPTION=True the proxy reads the answer, so it applies stop strings to the plain text."""
    decrypting = launch_proxy(protected_upstream.url, SGP_SGT_PATH=str(exact_sgt), SGP_OUTPUT_DECRYPTION="True")
    plain = OpenAI(base_url=exact_proxy.url + "/v1", api_key="x", max_retries=0, timeout=60)
    (full,), _ = chat_text(plain, False, temperature=0)
    client = OpenAI(base_url=decrypting.url + "/v1", api_key="x", max_retries=0, timeout=60)
    for stream in (False, True):
        assert chat_text(client, stream, temperature=0) == ([full], ["length"])
        assert chat_text(client, stream, temperature=0, stop=full[2:5]) == ([full[: full.find(full[2:5])]], ["stop"])
