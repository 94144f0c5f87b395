"""A hostile upstream cannot exhaust the proxy's memory: whole answers and stream lines are bounded (502)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import error_shape
from tests.procs import Service

LIMIT = 1 << 20  # SGP_MAX_UPSTREAM_RESPONSE_BYTES here
LINE = 64 << 10  # SGP_MAX_SSE_LINE_BYTES here
SENT_AT_MOST = 16 << 20  # the hostile server stops by itself after this much


class HostileUpstream:
    """A real socket server: /v1/models is small; completions are a huge answer, an endless line or a huge error."""

    def __init__(self) -> None:
        self.mode = "huge"
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.sent = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(1 << 20)
                if head.startswith(b"GET /v1/models"):
                    answer = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(answer), answer)
                    )
                    return
                self._hostile(conn)
            except OSError:
                return

    def _hostile(self, conn: socket.socket) -> None:
        block = b"a" * (256 << 10)
        if self.mode == "line":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            conn.sendall(b'data: {"id": "x", "choices": [{"index": 0, "text": "')
        else:
            status = b"200 OK" if self.mode == "huge" else b"500 Internal Server Error"
            conn.sendall(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, SENT_AT_MOST)
            )
            conn.sendall(b'{"id": "x", "choices": [{"index": 0, "text": "')
        sent = 0
        while sent < SENT_AT_MOST - len(block):  # bounded: the server stops by itself
            conn.sendall(block)
            sent += len(block)
            self.sent = sent


@pytest.fixture(scope="module")
def hostile(launch_proxy) -> Iterator[tuple[HostileUpstream, Service]]:
    upstream = HostileUpstream()
    proxy = launch_proxy(
        upstream.url,
        SGP_MAX_UPSTREAM_RESPONSE_BYTES=str(LIMIT),
        SGP_MAX_SSE_LINE_BYTES=str(LINE),
        SGP_UPSTREAM_MODEL="m",
    )
    yield upstream, proxy
    upstream.close()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_a_huge_whole_answer_is_a_502(hostile: tuple[HostileUpstream, Service]) -> None:
    upstream, proxy = hostile
    upstream.mode = "huge"
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": "m", "prompt": "hi"})):
        error = error_shape(requests.post(proxy.url + path, json=body, timeout=30), 502)
        assert error["code"] == "upstream_response_too_large" and "SGP_MAX_UPSTREAM_RESPONSE_BYTES" in error["message"]
    assert requests.get(proxy.url + "/livez", timeout=5).status_code == 200


def test_an_endless_stream_line_ends_the_stream_with_a_502_error(hostile: tuple[HostileUpstream, Service]) -> None:
    upstream, proxy = hostile
    upstream.mode = "line"
    with requests.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=30) as r:
        assert r.status_code == 200  # the stream had started: the error comes as its last event
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "upstream_response_too_large" and "SGP_MAX_SSE_LINE_BYTES" in error["message"]
    assert upstream.sent < SENT_AT_MOST - (1 << 20)  # the proxy hung up long before the server was done


def test_a_huge_error_body_is_not_read_whole(hostile: tuple[HostileUpstream, Service]) -> None:
    upstream, proxy = hostile
    upstream.mode = "error"
    error = error_shape(requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30), 500)
    assert "too large" in error["message"] and len(error["message"]) < 1000
