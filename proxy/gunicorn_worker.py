"""gunicorn's gthread worker: whole requests buffered before a thread takes them; headers sent with the body.

Slow clients: gthread hands a connection to a pool thread as soon as its
first bytes arrive, and the thread then reads the rest of the headers and the
body, blocking. A client that trickles a byte a second holds that thread for
as long as it likes; 64 such clients starve 2 workers x 16 threads, and
``/livez`` stops answering. Here the worker's event loop reads each request
(headers, then a Content-Length or chunked body) without blocking, into a
buffer, and only a complete request goes to a thread, whose parser then reads
it from the buffer. A request that is not complete ``request_deadline``
seconds after its first byte was awaited gets a 408 and its connection is
closed (``GUNICORN_REQUEST_DEADLINE``, set in gunicorn.conf.py). Not buffered
(gunicorn's own path): TLS terminated by gunicorn and HTTP/2; a body over the
app's ``MAX_CONTENT_LENGTH`` goes to a thread at once, for the app's 413, and
its connection is then closed instead of drained.

Coalescing, why: gunicorn writes the status line and headers with one ``sendall`` and the
body with another. On loopback or a LAN each send is its own segment, the
client wakes once for the headers and again for the body, and a short JSON
answer pays for two sends instead of one (0.25 ms per request on a 2-core VM,
measured with ``bench.compare``; 0.37 ms when re-measured against this worker
with the coalescing switched off; docs/benchmarks.md). Here the headers wait,
already formatted, for the first body bytes and leave with them; a response
without body bytes sends them when it closes, and a file sent with
``sendfile`` sends them first. Everything else is gunicorn's.

gunicorn builds HTTP/1 responses with ``gunicorn.http.wsgi.Response`` and
offers no setting to choose another, so the worker puts its own class there
when it starts, in its own process only (HTTP/2 keeps gunicorn's).
"""

from __future__ import annotations

import json
import selectors
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation
from gunicorn.workers import gthread

READ_SIZE = 256 << 10  # the most read from a client at once while buffering
MAX_HEAD = 1 << 20  # headers not complete by then are gunicorn's to refuse (its own limits are smaller)
DEFAULT_MAX_BODY = 64 << 20  # when the app names no MAX_CONTENT_LENGTH
INCOMPLETE, COMPLETE, HAND_OFF, TOO_LARGE, REFUSED = range(5)


class CoalescingResponse(wsgi.Response):
    """A gunicorn response whose headers go out in the same send as its first body bytes."""

    _held_headers: bytes | None = None
    headers_sent: bool  # gunicorn's own attribute, declared for the type checker

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


class RequestBuffer:
    """The bytes of one HTTP/1 request as they arrive, and whether the request is complete.

    Only framing is read here (the end of the headers, ``Content-Length``,
    ``Transfer-Encoding: chunked``); gunicorn's parser still parses and
    checks everything. Anything this does not understand is handed to it at
    once (``HAND_OFF``): it answers a malformed request with a 400.
    """

    def __init__(self, max_body: int, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.max_body = max_body
        self.head_end = -1  # index just past the blank line that ends the headers
        self.length: int | None = None  # Content-Length; None: chunked or no body
        self.chunked = False
        self.expects_continue = False
        self._chunk_at = 0  # where the next chunk-size line starts (chunked bodies)
        self._payload = 0  # bytes in the complete chunks so far (chunked bodies)
        self._searched = 0

    def feed(self, data: bytes) -> int:
        self.data += data
        return self.state()

    def state(self) -> int:
        if self.head_end < 0:
            end = self.data.find(b"\r\n\r\n", max(self._searched - 3, 0))
            if end < 0:
                self._searched = len(self.data)
                return HAND_OFF if len(self.data) > MAX_HEAD else INCOMPLETE
            self.head_end = end + 4
            framing = self._framing(bytes(self.data[:end]))
            if framing != INCOMPLETE:
                return framing
            self._chunk_at = self.head_end
        if self.chunked:
            return self._chunks()
        return COMPLETE if len(self.data) - self.head_end >= (self.length or 0) else INCOMPLETE

    def _framing(self, head: bytes) -> int:
        lengths, chunked = [], False
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return HAND_OFF
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value
            elif name == b"expect" and value == b"100-continue":
                self.expects_continue = True
        if chunked:
            if lengths:
                return HAND_OFF  # both: gunicorn refuses it
            self.chunked = True
            return INCOMPLETE
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return HAND_OFF
        self.length = int(lengths[0]) if lengths else None
        return TOO_LARGE if (self.length or 0) > self.max_body else INCOMPLETE

    def _chunks(self) -> int:
        """Walk complete chunks from where the last call stopped; the zero chunk and its trailers end the body."""
        data = self.data
        if len(data) - self.head_end > 2 * self.max_body + (1 << 20):
            return REFUSED  # framing (tiny chunks, long extensions) far larger than what it carries
        while True:
            eol = data.find(b"\r\n", self._chunk_at)
            if eol < 0:
                return HAND_OFF if len(data) - self._chunk_at > 4096 else INCOMPLETE
            try:
                size = int(bytes(data[self._chunk_at : eol]).split(b";")[0].strip(), 16)
            except ValueError:
                return HAND_OFF
            if size == 0:
                if data.startswith(b"\r\n", eol + 2):
                    return COMPLETE
                return COMPLETE if data.find(b"\r\n\r\n", eol) >= 0 else INCOMPLETE
            end = eol + 2 + size + 2
            if end > len(data):
                return INCOMPLETE
            self._chunk_at = end
            self._payload += size
            if self._payload > self.max_body:  # the app reads past its limit from the buffer and answers 413
                return TOO_LARGE


class ThreadWorker(gthread.ThreadWorker):
    """``worker_class = "proxy.gunicorn_worker.ThreadWorker"``: gthread, whole requests only, coalesced headers."""

    request_deadline: float = 60.0  # seconds for a request's headers and body to arrive (GUNICORN_REQUEST_DEADLINE)

    def init_process(self) -> None:
        wsgi.Response = CoalescingResponse  # read by gunicorn.http.wsgi.create for every HTTP/1 response
        util.write_error = write_json_error  # gunicorn's own 400/414/431/500 pages, OpenAI-shaped as the app's
        self._buffering: deque[gthread.TConn] = deque()  # in deadline order
        super().init_process()

    def _max_body(self) -> int:
        config = getattr(self.wsgi, "config", None)
        limit = config.get("MAX_CONTENT_LENGTH") if isinstance(config, dict) else None
        return int(limit) if limit else DEFAULT_MAX_BODY

    # ---- the event loop: buffer, then hand the whole request to a thread ----
    def enqueue_req(self, conn: gthread.TConn) -> None:
        if self.cfg.is_ssl or conn.is_http2 or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            super().enqueue_req(conn)  # gunicorn's own path: TLS and HTTP/2 read the socket themselves
            return
        held = conn.parser.unreader.take_buffered() if conn.parser is not None else b""  # pipelined bytes
        buffer = RequestBuffer(self._max_body(), held)
        conn.sgp_buffer = buffer
        conn.sgp_since = time.monotonic()
        conn.sgp_deadline = conn.sgp_since + self.request_deadline
        if held and self._ready(conn, buffer.state()):
            return
        conn.sock.setblocking(False)
        self._buffering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: gthread.TConn, client: object) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left before its request was complete
            self._stop_buffering(conn)
            self._close(conn)
            return
        state = conn.sgp_buffer.feed(data)
        if state == INCOMPLETE:
            if conn.sgp_buffer.expects_continue and conn.sgp_buffer.head_end >= 0:
                conn.sgp_buffer.expects_continue = False
                conn.sgp_continued = True  # the thread must not send a second 100 (see handle_request)
                _send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._stop_buffering(conn)
        if state == REFUSED:
            _send_quietly(
                conn, _error_answer(413, "Payload Too Large", "the request body is too large", "request_too_large")
            )
            self._close(conn)
            return
        self._ready(conn, state)

    def _ready(self, conn: gthread.TConn, state: int) -> bool:
        """Hand the connection to a thread unless its request is still incomplete."""
        if state == INCOMPLETE:
            return False
        conn.sgp_close_after = state == TOO_LARGE  # the app answers 413 unread: close, do not drain
        super().enqueue_req(conn)
        return True

    def _stop_buffering(self, conn: gthread.TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        try:
            self._buffering.remove(conn)
        except ValueError:
            pass

    def _close(self, conn: gthread.TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's expiry of idle connections, and a 408 for requests not complete by their deadline.

        A connection that has sent no byte of its request is closed after the
        keepalive time (at least 5 s, as gunicorn's own wait for a first byte),
        and at once by a stopping worker.
        """
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self._buffering):
            buffer = conn.sgp_buffer
            idle = not buffer.data and (not self.alive or now - conn.sgp_since > max(self.cfg.keepalive, 5))
            if conn.sgp_deadline > now and not idle:
                continue
            self._stop_buffering(conn)
            if buffer.data:
                _send_quietly(conn, _timeout_answer(self.request_deadline))
            self._close(conn)

    # ---- the thread: the parser reads the buffered request ----
    def handle(self, conn: gthread.TConn) -> object:
        buffer = getattr(conn, "sgp_buffer", None)
        if buffer is not None:
            conn.sgp_buffer = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(buffer.data))
        return super().handle(conn)

    def handle_request(self, req: object, conn: gthread.TConn) -> bool:
        if getattr(conn, "sgp_continued", False):
            conn.sgp_continued = False
            req._expected_100_continue = False  # type: ignore[attr-defined]  # gunicorn's Request; the event loop sent the 100 Continue
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: gthread.TConn, keepalive: bool) -> bool:
        if getattr(conn, "sgp_close_after", False):
            return False  # an oversized body is never read: close rather than drain it
        return super()._keepalive_after(conn, keepalive)


def _send_quietly(conn: gthread.TConn, data: bytes) -> None:
    """A short answer on a non-blocking socket, best effort: the client may be gone or not reading."""
    try:
        conn.sock.send(data)
    except OSError:
        pass


def _error_answer(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error answer with an OpenAI error body; the connection closes after it."""
    kind = "invalid_request_error" if status < 500 else "internal_error"
    error = {"message": message or reason, "type": kind, "param": None, "code": code}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1", "replace") + body


def _timeout_answer(deadline: float) -> bytes:
    message = f"the request did not arrive in full within {deadline:g} s"
    return _error_answer(408, "Request Timeout", message, "request_timeout")


def write_json_error(sock: object, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error`` with a JSON body: a request gunicorn refuses gets the app's error shape."""
    code = reason.lower().replace(" ", "_")
    util.write_nonblock(sock, _error_answer(status_int, reason, mesg, code))
