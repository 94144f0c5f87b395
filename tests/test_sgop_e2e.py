"""Output protection v2 end to end: a real gunicorn proxy, a real protected inference_server, real sockets.

* v2 is negotiated (``x-sgop-versions: 2,1`` up, ``x-sgop-version: 2`` back) and
  decrypts to the same text as the unprotected path, whole and streamed;
* a v1-only exchange still works (the proxy accepts v1);
* a man in the middle who reorders, duplicates, drops, truncates or swaps
  pieces across choices gets a 500 (whole) or an SSE error event then
  ``[DONE]`` (streamed), never a silently altered answer;
* under protection, logprobs are refused with a 400 before anything goes upstream.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

import sgop
from sgop import protocol as P
from tests.helpers import TINY_NAME
from tests.procs import Service
from tests.relay import RecordingRelay

QUESTION = "Tell me a short story about a lighthouse"
Events = list[dict[str, Any]]
FORWARD_UP = ("content-type", "authorization", "x-request-id", sgop.CLIENT_PUBLIC_KEY_HEADER, sgop.VERSIONS_HEADER)
FORWARD_DOWN = ("content-type", sgop.SERVER_PUBLIC_KEY_HEADER, sgop.VERSION_HEADER)


class Mitm:
    """A man in the middle between the proxy and the protected upstream, on real sockets.

    It forwards each request, parses the answer and hands it to ``tamper_events``
    (a stream's events, [DONE] left out) or ``tamper_body`` (a whole answer) before
    sending it on. ``strip`` names request headers it drops (a downgrade).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tamper_events: Callable[[Events], Events] = lambda events: events
        self.tamper_body: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body
        self.strip: tuple[str, ...] = ()
        self.seen_request_headers: list[dict[str, str]] = []
        self.seen_response_headers: list[dict[str, str]] = []
        self.seen_bodies: list[str] = []
        mitm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                r = requests.get(mitm.upstream + self.path, timeout=30)
                self._send(r.status_code, {"content-type": "application/json"}, r.content)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", "0")))
                up = {k: v for k, v in self.headers.items() if k.lower() in FORWARD_UP and k.lower() not in mitm.strip}
                mitm.seen_request_headers.append(up)
                r = requests.post(mitm.upstream + self.path, data=data, headers=up, timeout=60)
                down = {k: v for k, v in r.headers.items() if k.lower() in FORWARD_DOWN}
                mitm.seen_response_headers.append(down)
                mitm.seen_bodies.append(r.text)
                if r.status_code == 200 and "event-stream" in r.headers.get("content-type", ""):
                    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                    events = mitm.tamper_events(events)
                    out = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    self._send(200, down, out.encode())
                elif r.status_code == 200:
                    self._send(200, down, json.dumps(mitm.tamper_body(r.json())).encode())
                else:
                    self._send(r.status_code, down, r.content)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.tamper_events = lambda events: events
        self.tamper_body = lambda body: body
        self.strip = ()
        self.seen_request_headers.clear()
        self.seen_response_headers.clear()
        self.seen_bodies.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def mitm(protected_upstream: Service) -> Iterator[Mitm]:
    middle = Mitm(protected_upstream.url)
    yield middle
    middle.close()


@pytest.fixture
def clean_mitm(mitm: Mitm) -> Iterator[Mitm]:
    mitm.reset()
    yield mitm
    mitm.reset()


@pytest.fixture(scope="module")
def decrypting(launch_proxy, mitm: Mitm, exact_sgt: Path) -> Service:
    """SGP_OUTPUT_DECRYPTION=True behind the man in the middle."""
    return launch_proxy(
        mitm.url, SGP_SGT_PATH=str(exact_sgt), SGP_OUTPUT_DECRYPTION="True", SGP_UPSTREAM_MODEL=TINY_NAME
    )


@pytest.fixture(scope="module")
def relaying(launch_proxy, mitm: Mitm, exact_sgt: Path) -> Service:
    """SGP_OUTPUT_DECRYPTION=False behind the man in the middle: the client decrypts."""
    return launch_proxy(mitm.url, SGP_SGT_PATH=str(exact_sgt), SGP_UPSTREAM_MODEL=TINY_NAME)


def _chat(seed: int = 1, stream: bool = False, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": seed,
        "n": n,
        "stream": stream,
        **extra,
    }


def _texts(body_or_events: dict[str, Any] | Events) -> dict[int, str]:
    """Each choice's text, from a whole chat answer or a chat stream's events."""
    out: dict[int, str] = {}
    events = body_or_events if isinstance(body_or_events, list) else [body_or_events]
    for event in events:
        for choice in event.get("choices") or ():
            holder = choice.get("message") or choice.get("delta") or {}
            out[choice["index"]] = out.get(choice["index"], "") + (holder.get("content") or "")
    return out


def _stream_lines(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[requests.Response, list[bytes]]:
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=60, headers=headers or {}) as r:
        lines = [line for line in r.iter_lines() if line]
    return r, lines


def _events(lines: list[bytes]) -> Events:
    assert lines[-1] == b"data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


@pytest.fixture(scope="module")
def reference(exact_proxy: Service) -> dict[int, dict[int, str]]:
    """The unprotected answers (n=2) for seeds 1 and 2."""
    out = {}
    for seed in (1, 2):
        r = requests.post(exact_proxy.url + "/v1/chat/completions", json=_chat(seed, n=2), timeout=60)
        assert r.status_code == 200
        out[seed] = _texts(r.json())
    return out


# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize("stream", [False, True])
def test_decrypting_proxy_negotiates_v2_and_matches_the_unprotected_text(
    decrypting: Service, clean_mitm: Mitm, reference: dict[int, dict[int, str]], stream: bool
) -> None:
    if stream:
        r, lines = _stream_lines(decrypting.url, _chat(1, stream=True, n=2))
        texts = _texts(_events(lines))
    else:
        r = requests.post(decrypting.url + "/v1/chat/completions", json=_chat(1, n=2), timeout=60)
        texts = _texts(r.json())
    assert r.status_code == 200
    assert texts == reference[1]
    (up,) = clean_mitm.seen_request_headers
    assert {k.lower(): v for k, v in up.items()}[sgop.VERSIONS_HEADER] == "2,1"
    (down,) = clean_mitm.seen_response_headers
    assert {k.lower(): v for k, v in down.items()}[sgop.VERSION_HEADER] == "2"
    assert "sgop2:" in clean_mitm.seen_bodies[0] and "sgop1:" not in clean_mitm.seen_bodies[0]
    assert sgop.SERVER_PUBLIC_KEY_HEADER not in r.headers and sgop.VERSION_HEADER not in r.headers


def test_decrypting_proxy_still_accepts_v1(
    decrypting: Service, clean_mitm: Mitm, reference: dict[int, dict[int, str]]
) -> None:
    """A server that does not see x-sgop-versions answers v1; the proxy decrypts it."""
    clean_mitm.strip = (sgop.VERSIONS_HEADER,)
    r = requests.post(decrypting.url + "/v1/chat/completions", json=_chat(1, n=2), timeout=60)
    assert r.status_code == 200
    assert _texts(r.json()) == reference[1]
    assert "sgop1:" in clean_mitm.seen_bodies[0]
    assert {k.lower(): v for k, v in clean_mitm.seen_response_headers[0].items()}[sgop.VERSION_HEADER] == "1"


@pytest.mark.parametrize("stream", [False, True])
def test_relaying_proxy_forwards_versions_and_the_helper_verifies_v2(
    relaying: Service, clean_mitm: Mitm, reference: dict[int, dict[int, str]], stream: bool
) -> None:
    keys = sgop.KeyPair.generate()
    if stream:
        r, lines = _stream_lines(relaying.url, _chat(2, stream=True, n=2), keys.request_headers())
        events = _events(lines)
        assert any(sgop.is_protected_piece((c.get("delta") or {}).get("content")) for e in events for c in e["choices"])
        plain = _texts(list(sgop.decrypt_stream(keys, r.headers, events)))
        with pytest.raises(sgop.TruncatedError):  # the helper notices a stream cut short
            list(sgop.decrypt_stream(keys, r.headers, events[:-2]))
    else:
        r = requests.post(
            relaying.url + "/v1/chat/completions", json=_chat(2, n=2), timeout=60, headers=keys.request_headers()
        )
        assert r.status_code == 200
        body = r.json()
        assert all(c["message"]["content"].startswith("sgop2:") for c in body["choices"])
        plain = _texts(sgop.decrypt_response(keys, r.headers, body))
    assert r.headers[sgop.VERSION_HEADER] == "2"
    assert plain == reference[2]
    assert {k.lower(): v for k, v in clean_mitm.seen_request_headers[0].items()}[sgop.VERSIONS_HEADER] == "2,1"


def test_relaying_proxy_bad_versions_header_is_a_400_from_the_server(relaying: Service, clean_mitm: Mitm) -> None:
    keys = sgop.KeyPair.generate()
    headers = {**keys.request_headers(), sgop.VERSIONS_HEADER: "7,9"}
    r = requests.post(relaying.url + "/v1/chat/completions", json=_chat(1), timeout=60, headers=headers)
    assert r.status_code == 400
    assert "no common output-protection version" in r.json()["error"]["message"]


def test_example_client_speaks_v2(relaying: Service, clean_mitm: Mitm) -> None:
    """The README's client (examples/output_protection_client.py) against a real proxy and server."""
    import importlib.util

    from tests.procs import ROOT

    spec = importlib.util.spec_from_file_location("sgop_example", ROOT / "examples" / "output_protection_client.py")
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    client = OpenAI(base_url=relaying.url + "/v1", api_key="x", max_retries=0, timeout=60)
    keys = sgop.KeyPair.generate()
    whole = example.whole_answer(client, "m", QUESTION, keys)
    streamed = example.streamed_answer(client, "m", QUESTION, keys)
    assert whole and streamed and not sgop.is_protected_piece(whole)
    versions = [{k.lower(): v for k, v in h.items()}[sgop.VERSION_HEADER] for h in clean_mitm.seen_response_headers]
    assert versions == ["2", "2"]


# --------------------------------------------------------------------------- tampering


def _text_events(events: Events, index: int | None = None) -> list[int]:
    """Positions of the events that carry a choice's text (index None: any choice)."""
    return [
        k for k, e in enumerate(events) if e.get("choices") and (index is None or e["choices"][0]["index"] == index)
    ]


def _swap_text(a: dict[str, Any], b: dict[str, Any]) -> None:
    a["choices"][0]["text"], b["choices"][0]["text"] = b["choices"][0]["text"], a["choices"][0]["text"]


def _reorder(events: Events) -> Events:
    k = _text_events(events, 0)
    events[k[0]], events[k[1]] = events[k[1]], events[k[0]]
    return events


def _duplicate(events: Events) -> Events:
    k = _text_events(events, 0)[1]
    return [*events[: k + 1], copy.deepcopy(events[k]), *events[k + 1 :]]


def _drop(events: Events) -> Events:
    k = _text_events(events, 0)[1]
    return events[:k] + events[k + 1 :]


def _truncate(events: Events) -> Events:
    k = _text_events(events)[-1]  # the last choice's last piece, with its end marker
    return events[:k] + events[k + 1 :]


def _cross_choice(events: Events) -> Events:
    a, b = _text_events(events, 0)[0], _text_events(events, 1)[0]
    _swap_text(events[a], events[b])
    return events


STREAM_TAMPERS = {
    "reorder": _reorder,
    "duplicate": _duplicate,
    "drop": _drop,
    "truncate": _truncate,
    "cross_choice": _cross_choice,
}


def _records_tamper(fn: Callable[[list[str]], list[str]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def tamper(body: dict[str, Any]) -> dict[str, Any]:
        choice = body["choices"][0]
        choice["text"] = P.join_records(fn(P.split_records(choice["text"])))  # [text, end]
        return body

    return tamper


def _whole_cross(body: dict[str, Any]) -> dict[str, Any]:
    a, b = body["choices"]
    a["text"], b["text"] = b["text"], a["text"]
    return body


WHOLE_TAMPERS = {
    "reorder": _records_tamper(lambda r: [r[1], r[0]]),
    "duplicate": _records_tamper(lambda r: [r[0], r[0], r[1]]),
    "drop": _records_tamper(lambda r: r[1:]),
    "truncate": _records_tamper(lambda r: r[:1]),
    "cross_choice": _whole_cross,
    "drop_a_choice": lambda body: {**body, "choices": body["choices"][:1]},
}


@pytest.mark.parametrize("case", sorted(STREAM_TAMPERS))
def test_tampered_v2_stream_ends_with_an_error_event(decrypting: Service, clean_mitm: Mitm, case: str) -> None:
    seen: list[int] = []

    def tamper(events: Events) -> Events:
        seen.append(len(_text_events(events, 0)))
        return STREAM_TAMPERS[case](events)

    clean_mitm.tamper_events = tamper
    r, lines = _stream_lines(decrypting.url, _chat(1, stream=True, n=2))
    assert seen and seen[0] >= 3  # enough pieces for every case
    assert r.status_code == 200
    assert lines[-1] == b"data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "output_protection_failed" and "verify" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("case", sorted(WHOLE_TAMPERS))
def test_tampered_v2_whole_answer_is_a_500(decrypting: Service, clean_mitm: Mitm, case: str) -> None:
    clean_mitm.tamper_body = WHOLE_TAMPERS[case]
    r = requests.post(decrypting.url + "/v1/chat/completions", json=_chat(1, n=2), timeout=60)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "output_protection_failed" and "decrypt" in error["message"]
    assert QUESTION not in r.text


# --------------------------------------------------------------------------- no logprobs under protection

LOGPROBS_CASES = [
    ("chat", {"logprobs": True}, "logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),
    ("completion", {"logprobs": 0}, "logprobs"),
    ("completion", {"logprobs": 3}, "logprobs"),
]


@pytest.fixture(scope="module")
def recorded() -> Iterator[dict[str, Any]]:
    holder: dict[str, Any] = {}
    yield holder
    for relay in holder.values():
        if isinstance(relay, RecordingRelay):  # the proxies are stopped by launch_proxy
            relay.close()


def _recorded_proxy(
    launch_proxy, protected_upstream: Service, recorded: dict[str, Any], mode: str
) -> tuple[Service, RecordingRelay]:
    if mode not in recorded:
        relay = RecordingRelay(protected_upstream.port)
        env = {"SGP_UPSTREAM_MODEL": TINY_NAME}
        if mode == "decrypting":
            env["SGP_OUTPUT_DECRYPTION"] = "True"
        recorded[mode] = relay
        recorded[mode + ".proxy"] = launch_proxy(relay.url, **env)
    return recorded[mode + ".proxy"], recorded[mode]


@pytest.mark.parametrize("mode", ["decrypting", "client_key"])
@pytest.mark.parametrize(("kind", "fields", "param"), LOGPROBS_CASES)
def test_logprobs_under_protection_are_refused_and_nothing_goes_upstream(
    launch_proxy, protected_upstream: Service, recorded: dict[str, Any], mode: str, kind: str, fields: dict, param: str
) -> None:
    proxy, relay = _recorded_proxy(launch_proxy, protected_upstream, recorded, mode)
    headers = sgop.KeyPair.generate().request_headers() if mode == "client_key" else {}
    if kind == "chat":
        path, body = "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": QUESTION}]}
    else:
        path, body = "/v1/completions", {"model": "m", "prompt": QUESTION}
    relay.clear()
    r = requests.post(proxy.url + path, json={**body, "max_tokens": 4, **fields}, headers=headers, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"] and "output protection" in error["message"]
    assert relay.sent() == b""  # nothing went upstream


def test_logprobs_without_protection_still_work(
    launch_proxy, protected_upstream: Service, recorded: dict[str, Any]
) -> None:
    """The same proxy without a client key (and decryption off) still passes logprobs through."""
    proxy, relay = _recorded_proxy(launch_proxy, protected_upstream, recorded, "client_key")
    relay.clear()
    r = requests.post(
        proxy.url + "/v1/completions",
        json={"model": "m", "prompt": QUESTION, "max_tokens": 2, "logprobs": 1},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is not None
    assert b'"logprobs"' in relay.sent()


def test_protected_inference_server_refuses_logprobs_itself(protected_upstream: Service) -> None:
    """Defence in depth: the protected server does not send logprob tokens in clear beside ciphertext."""
    r = requests.post(
        protected_upstream.url + "/v1/chat/completions",
        json={"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "max_tokens": 2},
        headers=sgop.KeyPair.generate().request_headers(),
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_readme_client_snippet_runs(relaying: Service, clean_mitm: Mitm) -> None:
    """The README's output-protection snippet, as written, against a real proxy and a real protected server."""
    import re
    import subprocess
    import sys

    from tests.procs import ROOT

    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from sgop import" in b]
    assert len(blocks) == 1
    code = blocks[0].replace("http://127.0.0.1:8600/v1", relaying.url + "/v1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and not sgop.is_protected_piece(result.stdout.strip())
    assert {k.lower(): v for k, v in clean_mitm.seen_response_headers[0].items()}[sgop.VERSION_HEADER] == "2"


def test_min_version_two_refuses_a_downgrade(launch_proxy, clean_mitm: Mitm, exact_sgt: Path) -> None:
    """SGP_OUTPUT_PROTECTION_MIN_VERSION=2: the proxy asks for v2 only, and a v1 answer is a 500."""
    proxy = launch_proxy(
        clean_mitm.url,
        SGP_SGT_PATH=str(exact_sgt),
        SGP_OUTPUT_DECRYPTION="True",
        SGP_UPSTREAM_MODEL=TINY_NAME,
        SGP_OUTPUT_PROTECTION_MIN_VERSION="2",
    )
    r = requests.post(proxy.url + "/v1/chat/completions", json=_chat(1), timeout=60)
    assert r.status_code == 200
    assert {k.lower(): v for k, v in clean_mitm.seen_request_headers[0].items()}[sgop.VERSIONS_HEADER] == "2"
    clean_mitm.strip = (sgop.VERSIONS_HEADER,)  # the server no longer sees the offer: it answers v1
    for stream in (False, True):  # the version is in the headers: refused before a stream starts
        r = requests.post(proxy.url + "/v1/chat/completions", json=_chat(1, stream=stream), timeout=60)
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["code"] == "output_protection_failed" and "version '1'" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_upstream_relays_v2_for_the_client_to_decrypt(
    launch_proxy, protected_upstream: Service, exact_sgt: Path, recorded: dict[str, Any], stream: bool
) -> None:
    """SGP_UPSTREAM_API=chat: the protected server's chat answer (v2) is relayed; the helper decrypts it."""
    if "chat_upstream" not in recorded:
        recorded["chat_upstream"] = launch_proxy(
            protected_upstream.url, SGP_SGT_PATH=str(exact_sgt), SGP_UPSTREAM_API="chat", SGP_UPSTREAM_MODEL=TINY_NAME
        )
    proxy = recorded["chat_upstream"]
    body = _chat(3, stream=stream, n=2)
    clear = requests.post(proxy.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
    assert clear.status_code == 200 and sgop.SERVER_PUBLIC_KEY_HEADER not in clear.headers  # no key: answered in clear
    keys = sgop.KeyPair.generate()
    if stream:
        r, lines = _stream_lines(proxy.url, body, keys.request_headers())
        plain = _texts(list(sgop.decrypt_stream(keys, r.headers, _events(lines))))
    else:
        r = requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=60, headers=keys.request_headers())
        assert all(c["message"]["content"].startswith("sgop2:") for c in r.json()["choices"])
        plain = _texts(sgop.decrypt_response(keys, r.headers, r.json()))
    assert r.headers[sgop.VERSION_HEADER] == "2"
    assert plain == _texts(clear.json())


@pytest.mark.parametrize("stream", [False, True])
def test_decrypting_proxy_applies_stop_after_decryption(
    decrypting: Service, clean_mitm: Mitm, reference: dict[int, dict[int, str]], stream: bool
) -> None:
    """Stop sequences run on the decrypted text; a v2 answer the proxy cuts short on purpose is no error."""
    text = reference[1][0]
    assert len(text) >= 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = {i: t.split(stop)[0] for i, t in reference[1].items()}
    body = _chat(1, stream=stream, n=2, stop=[stop])
    if stream:
        r, lines = _stream_lines(decrypting.url, body)
        events = _events(lines)
        assert not any("error" in e for e in events)
        texts = _texts(events)
        finish = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")}
    else:
        r = requests.post(decrypting.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        texts = _texts(r.json())
        finish = {c["index"]: c["finish_reason"] for c in r.json()["choices"]}
    assert texts == expected
    assert finish[0] == "stop"
