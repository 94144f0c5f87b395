"""A fast canned upstream: ``python -m bench.canned --port N [--tokens 256]``.

Why: the null ``inference_server`` (werkzeug, one Python thread per request,
one write per chunk) streams only ~7,000 chunks/s on a shared 2-core machine,
so a relay benchmark against it measures the upstream. This one reads the
request (headers and the whole body), then answers from prebuilt bytes: a
completions JSON, or an SSE stream of N chunks written in 64 KiB batches
(HTTP/1.1 chunked, keep-alive, as vLLM's server answers). It validates
nothing: the overhead benchmark keeps the null upstream for that.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from functools import lru_cache

MODEL = "canned"
BATCH = 64 << 10
_MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')
_STREAM = re.compile(rb'"stream":\s*true')
_USAGE = re.compile(rb'"include_usage":\s*true')


def _chunk(i: int, finish: str | None) -> dict:
    return {
        "id": "cmpl-canned",
        "object": "text_completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "text": f" tok{i}", "logprobs": None, "finish_reason": finish, "stop_reason": None}],
    }


@lru_cache(maxsize=64)
def stream_body(tokens: int, usage: bool) -> list[bytes]:
    """The whole SSE answer as HTTP/1.1 chunks of about ``BATCH`` bytes (chunked framing included)."""
    events = [_chunk(i, "length" if i == tokens - 1 else None) for i in range(tokens)]
    if usage:
        events.append(
            {
                "id": "cmpl-canned",
                "object": "text_completion",
                "created": 1700000000,
                "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
            }
        )
    raw = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"
    out = []
    for start in range(0, len(raw), BATCH):
        piece = raw[start : start + BATCH]
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    out.append(b"0\r\n\r\n")
    return out


@lru_cache(maxsize=64)
def whole_body(tokens: int) -> bytes:
    body = {
        "id": "cmpl-canned",
        "object": "text_completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "text": "".join(f" tok{i}" for i in range(tokens)),
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
    }
    return json.dumps(body).encode()


MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 8192}]}).encode()


def _answer(sock: socket.socket, status: str, body: bytes, content_type: str = "application/json") -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)


def serve_connection(sock: socket.socket, default_tokens: int) -> None:
    """Requests on one keep-alive connection until the client closes it."""
    buf = b""
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(BATCH)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:  # read the whole body, as a real server must
                data = sock.recv(max(BATCH, length - len(buf)))
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            if method == b"GET" and path.startswith(b"/v1/models"):
                _answer(sock, "200 OK", MODELS)
            elif method == b"POST" and path.startswith(b"/v1/completions"):
                match = _MAX_TOKENS.search(body)
                tokens = int(match.group(1)) if match else default_tokens
                if _STREAM.search(body):
                    sock.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    for piece in stream_body(tokens, bool(_USAGE.search(body))):
                        sock.sendall(piece)
                else:
                    _answer(sock, "200 OK", whole_body(tokens))
            else:
                _answer(sock, "404 Not Found", b'{"error": {"message": "not found"}}')


def serve(host: str, port: int, tokens: int) -> None:
    listener = socket.create_server((host, port), backlog=256)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, tokens), daemon=True).start()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.canned", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=256, help="chunks a stream when the body names no max_tokens")
    args = p.parse_args()
    stream_body(args.tokens, False)  # built before the first request
    print(f"canned upstream on {args.host}:{args.port} at {time.ctime()}", flush=True)
    serve(args.host, args.port, args.tokens)


if __name__ == "__main__":
    main()
