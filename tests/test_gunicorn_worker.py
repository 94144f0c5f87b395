"""The gunicorn worker: a response's headers leave with its first body bytes, and nothing is lost on the way."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from proxy.gunicorn_worker import CoalescingResponse
from tests.procs import Service


class CountingSocket:
    """A real socket that records what each ``sendall`` carried."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, CountingSocket]]:
    client, server = socket.socketpair()
    try:
        yield client, CountingSocket(server)
    finally:
        client.close()
        server.close()


def _response(client: socket.socket, server: CountingSocket, request: bytes) -> CoalescingResponse:
    client.sendall(request)
    req = next(RequestParser(Config(), server.sock, ("127.0.0.1", 1)))
    return CoalescingResponse(req, server, Config())


def _received(client: socket.socket) -> bytes:
    client.settimeout(2)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def test_a_whole_answer_is_one_send(wire: tuple[socket.socket, CountingSocket]) -> None:
    client, server = wire
    resp = _response(client, server, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "12")])
    resp.write(b'{"ok": true}')
    resp.close()
    server.sock.shutdown(socket.SHUT_WR)
    assert len(server.sends) == 1
    head, _, body = _received(client).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 12" in head
    assert body == b'{"ok": true}'


def test_a_stream_sends_its_headers_with_the_first_chunk(wire: tuple[socket.socket, CountingSocket]) -> None:
    client, server = wire
    resp = _response(client, server, b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    for event in (b"data: 1\n\n", b"", b"data: [DONE]\n\n"):
        resp.write(event)
    resp.close()
    server.sock.shutdown(socket.SHUT_WR)
    assert len(server.sends) == 3  # headers + first chunk, second chunk, the last-chunk marker
    head, _, body = _received(client).partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"9\r\ndata: 1\n\n\r\nE\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


@pytest.mark.parametrize("request_line", [b"HEAD /x HTTP/1.1", b"GET /empty HTTP/1.1"])
def test_an_answer_without_body_bytes_still_sends_its_headers(
    wire: tuple[socket.socket, CountingSocket], request_line: bytes
) -> None:
    client, server = wire
    resp = _response(client, server, request_line + b"\r\nHost: t\r\n\r\n")
    resp.start_response("204 No Content" if b"empty" in request_line else "200 OK", [("Content-Length", "0")])
    resp.write(b"")
    resp.close()
    server.sock.shutdown(socket.SHUT_WR)
    assert _received(client).startswith(b"HTTP/1.1 20")


def test_the_proxy_runs_this_worker_and_answers_over_one_connection(proxy: Service) -> None:
    assert "Using worker: proxy.gunicorn_worker.ThreadWorker" in proxy.log()
    with requests.Session() as session:  # keep-alive: each answer must be complete for the next to parse
        for path in ("/livez", "/v1/models", "/livez", "/openapi.json"):
            response = session.get(proxy.url + path, timeout=10)
            assert response.status_code == 200 and response.json()
        css = session.get(proxy.url + "/flasgger_static/swagger-ui.css", timeout=10)  # a file: gunicorn's sendfile
        assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
        assert len(css.content) == int(css.headers["Content-Length"]) > 1000
        assert session.head(proxy.url + "/livez", timeout=10).status_code == 200  # headers only
        assert session.get(proxy.url + "/livez", timeout=10).json()
