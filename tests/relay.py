"""A recording TCP relay: sits between the proxy and the upstream and keeps every byte sent upstream.

It is how tests see exactly what leaves the proxy, on real sockets.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class RecordingRelay:
    """Listens on a free loopback port and forwards each connection to ``target``."""

    def __init__(self, target_port: int, answer: bool = True, rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self.target_port = target_port
        self.answer = answer  # False: accept and never answer (a hung upstream)
        self.rewrite = rewrite  # applied to each block the upstream sends back (a man in the middle)
        self._sent: list[bytes] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self.accepted = 0  # connections the proxy opened through the relay
        threading.Thread(target=self._accept, daemon=True).start()

    def sent(self) -> bytes:
        """Everything the proxy sent upstream so far."""
        with self._lock:
            return b"".join(self._sent)

    def clear(self) -> None:
        with self._lock:
            self._sent.clear()

    def close(self) -> None:
        self._server.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._open.append(client)
            self.accepted += 1
            if not self.answer:
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._open.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _swallow(self, client: socket.socket) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._sent.append(data)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self._sent.append(data)
                elif self.rewrite is not None:
                    data = self.rewrite(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class LoopbackHTTPServer:
    """A threaded HTTP server on 127.0.0.1 for a test's fake peer: started with a handler class, closed once."""

    url: str

    def _serve(self, handler: type) -> None:
        from http.server import ThreadingHTTPServer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class CannedUpstream(LoopbackHTTPServer):
    """An HTTP server on a real socket that answers every request with one fixed status and OpenAI error.

    For statuses the real inference_server has no way to produce on demand (429, 503, ...).
    """

    def __init__(self, status: int = 500, message: str = "canned failure") -> None:
        from http.server import BaseHTTPRequestHandler

        self.status = status
        self.message = message
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b'{"error": {"message": "%s", "type": "canned", "param": null, "code": %d}}' % (
                    owner.message.encode(),
                    owner.status,
                )
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)


class ScriptedUpstream(LoopbackHTTPServer):
    """A small vLLM-compatible server on a real socket: fixed words per choice, and every request kept.

    For in-process tests of the serving layer: it answers ``/v1/completions`` and
    ``/v1/chat/completions``, whole or streamed (with ``n`` choices and the usage
    chunk when asked), and ``/v1/models``. ``requests`` holds ``(path, headers, body)``
    of each POST. ``status`` other than 200 answers every POST with an OpenAI error.
    """

    WORDS = ("Hello", " there", " friend")

    def __init__(self, model: str = "scripted-model") -> None:
        import json
        from http.server import BaseHTTPRequestHandler

        self.model = model
        self.status = 200
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": owner.model}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.requests.append((self.path, dict(self.headers), body))
                if owner.status != 200:
                    error = {"error": {"message": "scripted failure", "type": "x", "param": None, "code": None}}
                    return self._send(owner.status, json.dumps(error).encode())
                events = owner.events(self.path, body)
                if not body.get("stream"):
                    return self._send(200, json.dumps(events[0]).encode())
                sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                self._send(200, sse, "text/event-stream")

            def _send(self, status: int, data: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)

    def events(self, path: str, body: dict) -> list[dict]:
        """The answer to ``body``: one whole event, or the stream's events (``[DONE]`` left out)."""
        chat = path.endswith("/chat/completions")
        prompts = body.get("prompt_embeds")
        choices = int(body.get("n") or 1) * (len(prompts) if isinstance(prompts, list) else 1)
        usage = {"prompt_tokens": 5, "completion_tokens": len(self.WORDS) * choices}
        usage["total_tokens"] = 5 + usage["completion_tokens"]
        base = {"id": "up-1", "created": 1700000000, "model": self.model}
        if not body.get("stream"):
            text = "".join(self.WORDS)
            if chat:
                message = {"role": "assistant", "content": text}
                out = [
                    {"index": i, "message": message, "logprobs": None, "finish_reason": "length"}
                    for i in range(choices)
                ]
                return [{**base, "object": "chat.completion", "choices": out, "usage": usage}]
            out = [{"index": i, "text": text, "logprobs": None, "finish_reason": "length"} for i in range(choices)]
            return [{**base, "object": "text_completion", "choices": out, "usage": usage}]
        events = []
        for w, word in enumerate(self.WORDS):
            finish = "length" if w == len(self.WORDS) - 1 else None
            for i in range(choices):
                if chat:
                    choice = {"index": i, "delta": {"content": word}, "logprobs": None, "finish_reason": finish}
                    events.append({**base, "object": "chat.completion.chunk", "choices": [choice]})
                else:
                    choice = {"index": i, "text": word, "logprobs": None, "finish_reason": finish}
                    events.append({**base, "object": "text_completion", "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            kind = "chat.completion.chunk" if chat else "text_completion"
            events.append({**base, "object": kind, "choices": [], "usage": usage})
        return events
