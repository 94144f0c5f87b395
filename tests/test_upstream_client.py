"""The upstream client on real sockets: keep-alive connections reused, a stalled stream end never waited out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bench import canned
from proxy.upstream import END_OF_STREAM_SECONDS, UpstreamClient
from tests.procs import free_port
from tests.relay import RecordingRelay


@pytest.fixture
def keep_alive_upstream() -> Iterator[RecordingRelay]:
    """bench.canned (HTTP/1.1, chunked streams, keep-alive, like vLLM) behind a relay that counts connections."""
    port = free_port()
    threading.Thread(target=canned.serve, args=("127.0.0.1", port, 8), daemon=True).start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    relay = RecordingRelay(port)
    yield relay
    relay.close()


def _events(client: UpstreamClient, streamed: bool) -> list[dict]:
    payload = {"model": "m", "prompt": "x", "max_tokens": 8, "stream": streamed}
    reply = client.post("/v1/completions", payload, {}, streamed=streamed)
    return [event for batch in reply.batches() for event in batch]


def test_one_connection_serves_streams_and_whole_answers_in_turn(keep_alive_upstream: RecordingRelay) -> None:
    client = UpstreamClient(keep_alive_upstream.url, 5, 30)
    for streamed in (True, False, True, True, False):
        events = _events(client, streamed)
        assert len(events) == (8 if streamed else 1)
    assert client.get_models()["data"]
    assert keep_alive_upstream.accepted == 1


def _stalling_upstream(state: dict[str, int], stop: threading.Event) -> None:
    """Answers every request with a stream that sends [DONE] and then neither ends nor closes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        state["port"] = server.getsockname()[1]
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            state["accepted"] = len(held)
            conn.recv(65536)
            event = b'data: {"id": "c", "choices": [{"index": 0, "text": "hi"}]}\n\ndata: [DONE]\n\n'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % len(event)
                + event
                + b"\r\n"
            )  # and no "0\r\n\r\n": the response never ends
        for conn in held:
            conn.close()


def test_a_stream_whose_end_never_comes_is_dropped_not_waited_for() -> None:
    state: dict[str, int] = {"accepted": 0}
    stop = threading.Event()
    threading.Thread(target=_stalling_upstream, args=(state, stop), daemon=True).start()
    while "port" not in state:
        time.sleep(0.01)
    client = UpstreamClient(f"http://127.0.0.1:{state['port']}", 5, 30)
    try:
        for _ in range(2):
            started = time.monotonic()
            assert [e["choices"][0]["text"] for e in _events(client, True)] == ["hi"]
            assert time.monotonic() - started < END_OF_STREAM_SECONDS + 1.0
        assert state["accepted"] == 2  # the unfinished connection was closed, not reused
    finally:
        stop.set()
