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


class CannedUpstream:
    """An HTTP server on a real socket that answers every request with one fixed status and OpenAI error.

    For statuses the real inference_server has no way to produce on demand (429, 503, ...).
    """

    def __init__(self, status: int = 500, message: str = "canned failure") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
