"""gunicorn's gthread worker, sending each response's headers together with its first body bytes.

Why: gunicorn writes the status line and headers with one ``sendall`` and the
body with another. On loopback or a LAN each send is its own segment, the
client wakes once for the headers and again for the body, and a short JSON
answer pays for two sends instead of one (0.25 ms per request on a 2-core VM,
measured with ``bench.compare``; docs/benchmarks.md). Here the headers wait,
already formatted, for the first body bytes and leave with them; a response
without body bytes sends them when it closes, and a file sent with
``sendfile`` sends them first. Everything else is gunicorn's.

gunicorn builds HTTP/1 responses with ``gunicorn.http.wsgi.Response`` and
offers no setting to choose another, so the worker puts its own class there
when it starts, in its own process only (HTTP/2 keeps gunicorn's).
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers import gthread


class CoalescingResponse(wsgi.Response):
    """A gunicorn response whose headers go out in the same send as its first body bytes."""

    _held_headers: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend([f"{name}: {value}\r\n" for name, value in self.headers])
        self._held_headers = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True  # formatted and committed; they leave with the first body bytes

    def _emit_body(self, data: bytes) -> None:
        head = self._held_headers
        if head is None:
            super()._emit_body(data)
            return
        self._held_headers = None
        if self.chunked:
            self.sock.sendall(b"".join([head, b"%X\r\n" % len(data), data, b"\r\n"]))
        else:
            self.sock.sendall(head + data)

    def flush_headers(self) -> None:
        """Send headers still held (a response that ends without body bytes, or before a sendfile)."""
        head, self._held_headers = self._held_headers, None
        if head is not None:
            util.write(self.sock, head)

    def sendfile(self, respiter: object) -> bool:
        self.send_headers()
        self.flush_headers()
        return super().sendfile(respiter)

    def close(self) -> None:
        self.send_headers()
        self.flush_headers()
        super().close()


class ThreadWorker(gthread.ThreadWorker):
    """``worker_class = "proxy.gunicorn_worker.ThreadWorker"``: gthread with :class:`CoalescingResponse`."""

    def init_process(self) -> None:
        wsgi.Response = CoalescingResponse  # read by gunicorn.http.wsgi.create for every HTTP/1 response
        super().init_process()
