"""The client of the vLLM server: pooled connections, auth, timeouts, embeds, SSE.

Only this module talks to the inference service. It sends obfuscated
``prompt_embeds`` (never prompt text) and turns every transport failure into
a :mod:`proxy.errors` exception with the right status.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import certifi
import pybase64
import torch
import urllib3
import urllib3.connection
from urllib3.util import make_headers

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError
from proxy.tensor_archive import archive_nbytes, tensor_archive

log = logging.getLogger(__name__)


READ_SIZE = 64 << 10  # the most of a stream read at once (one relay batch)
END_OF_STREAM_SECONDS = 0.05  # the most spent reading a stream's end after [DONE] to keep its connection
MAX_RESPONSE_BYTES = 64 << 20  # SGP_MAX_UPSTREAM_RESPONSE_BYTES: the largest whole answer read
MAX_LINE_BYTES = 1 << 20  # SGP_MAX_SSE_LINE_BYTES: the longest stream line held while its end is awaited
SMALL_BODY = 256 << 10  # a completions body up to this size is joined and sent at once
B64_SLICE = 3 << 18  # 768 KiB in, 1 MiB of base64 out: small enough for malloc to reuse, no fresh page faults


class PromptEmbeds:
    """One ``prompt_embeds`` value (base64 of ``torch.save(tensor)``), produced while it is sent.

    Why not one string: for 2048 x 4096 bf16 the naive path (``torch.save``
    with its CRC32, one 22 MB base64 string, ``json.dumps`` of it, its UTF-8
    copy) costs hundreds of milliseconds on a 2-core machine, mostly copies
    and page faults. Here the archive is written directly
    (:mod:`proxy.tensor_archive`: ``torch.save``'s bytes, without the CRC32,
    the tensor's own bytes referenced, not copied) and the base64 is made in
    1 MiB slices as the body goes out.
    """

    _make: Callable[[], torch.Tensor] | None = None  # a deferred value's transform (see deferred)
    _shape: tuple[int, ...]  # a deferred value's announced shape and dtype
    _dtype: torch.dtype
    tensor: torch.Tensor | None

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = _checked(tensor)  # keeps the referenced bytes alive
        self.pieces = tensor_archive(self.tensor)
        self.nbytes = _pieces_nbytes(self.pieces)

    @classmethod
    def deferred(cls, make: Callable[[], torch.Tensor], shape: tuple[int, int], dtype: torch.dtype) -> PromptEmbeds:
        """A value whose tensor is made by ``make()`` only when it is sent, and dropped once sent.

        Why: the embeddings of a completions prompt list used to be made all
        before the body was sent, and all lived at once (a 766 KB request took
        a worker to 2.6 GB). The archive's size depends only on the shape and
        dtype, so the Content-Length is known before any transform runs.
        """
        nbytes = archive_nbytes(dtype, shape)
        if nbytes is None:
            return cls(make())
        self = cls.__new__(cls)
        self._make, self._shape, self._dtype, self.nbytes = make, tuple(shape), dtype, nbytes
        self.tensor, self.pieces = None, []
        return self

    @property
    def b64_len(self) -> int:
        return 4 * ((self.nbytes + 2) // 3)

    def b64_chunks(self) -> Iterator[bytes]:
        """The base64 (standard alphabet, padded) of the serialized bytes, in slices."""
        if self._make is None:
            yield from _b64_chunks(self.pieces)
            return
        tensor = _checked(self._make())  # held by this generator only: freed when it is done
        if tuple(tensor.shape) != self._shape or tensor.dtype != self._dtype:
            raise RuntimeError(f"a deferred prompt_embeds is {tuple(tensor.shape)} {tensor.dtype}, not as announced")
        pieces = tensor_archive(tensor)
        if _pieces_nbytes(pieces) != self.nbytes:
            raise RuntimeError("a deferred prompt_embeds archive differs in size from the one announced")
        yield from _b64_chunks(pieces)


def _checked(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 2 or tensor.device.type != "cpu" or tensor.is_sparse:
        raise ValueError("prompt_embeds must be a dense 2-D CPU tensor")
    return tensor.contiguous()


def _pieces_nbytes(pieces: list[bytes | memoryview]) -> int:
    return sum(len(piece) if isinstance(piece, bytes) else piece.nbytes for piece in pieces)


def _b64_chunks(pieces: list[bytes | memoryview]) -> Iterator[bytes]:
    """The base64 of ``pieces`` joined, in slices of about ``B64_SLICE``, without joining them."""
    pending = bytearray()
    for piece in pieces:
        if len(piece) < B64_SLICE:
            pending += piece
            if len(pending) >= B64_SLICE:
                cut = len(pending) - len(pending) % 3
                yield pybase64.b64encode(pending[:cut])
                del pending[:cut]
            continue
        view = memoryview(piece)
        start = (-len(pending)) % 3  # complete the pending bytes to a multiple of 3 first
        pending += view[:start]
        if pending:
            yield pybase64.b64encode(pending)
            pending = bytearray()
        end = start + (len(view) - start) // 3 * 3
        for offset in range(start, end, B64_SLICE):
            yield pybase64.b64encode(view[offset : min(offset + B64_SLICE, end)])
        pending += view[end:]
    if pending:
        yield pybase64.b64encode(pending)


def encode_prompt_embeds(tensor: torch.Tensor) -> str:
    """vLLM's ``prompt_embeds`` wire value: base64 of ``torch.save`` of a dense 2-D CPU tensor."""
    return b"".join(PromptEmbeds(tensor).b64_chunks()).decode("ascii")


class EmbedsBody:
    """A JSON request body whose :class:`PromptEmbeds` values (anywhere in it) are streamed, never joined.

    ``prompt_embeds`` of a completions request, or chat ``prompt_embeds``
    content parts deep in ``messages``: the JSON is written once with a slot
    string in place of each embedding (random per process, so no client text
    can forge one), then cut at the slots; the base64 is made while the body
    is sent. ``__len__`` gives the Content-Length, so the body goes out as is
    (not chunked), piece by piece.
    """

    _SLOT = "\x00prompt-embeds-" + secrets.token_hex(16)
    _SLOT_JSON = json.dumps(_SLOT).encode()

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.embeds: list[PromptEmbeds] = []
        self.parts = json.dumps(self._slotted(payload)).encode().split(self._SLOT_JSON)
        if len(self.parts) != len(self.embeds) + 1:
            raise ValueError("a request field holds the embeddings slot string")
        self._len = sum(len(p) for p in self.parts) + sum(2 + e.b64_len for e in self.embeds)

    def _slotted(self, value: Any) -> Any:
        if isinstance(value, PromptEmbeds):
            self.embeds.append(value)
            return self._SLOT
        if isinstance(value, Mapping):
            return {k: self._slotted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._slotted(v) for v in value]
        return value

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for part, embeds in zip(self.parts, self.embeds, strict=False):
            yield part + b'"'
            yield from embeds.b64_chunks()
            yield b'"'
        yield self.parts[-1]


class UpstreamReply:
    """An open upstream answer: its headers and its events (one for a whole answer)."""

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse,
        conn: urllib3.connection.HTTPConnection,
        pool: ConnectionPool,
        url: str,
        streamed: bool = False,
        max_bytes: int = MAX_RESPONSE_BYTES,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self._response = response
        self._max_bytes = max_bytes
        self._max_line = max_line
        self._conn: urllib3.connection.HTTPConnection | None = conn
        self._pool = pool
        self.streamed = streamed
        self.headers: Mapping[str, str] = response.headers
        self._url = url
        self._done = False  # a stream's [DONE] came: its end is read on close, to keep the connection
        self.read_whole = False  # the answer was read to its end without an error: the connection is reusable

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """Parsed events, in batches of those already received; closes the upstream connection when done.

        A whole answer is one batch of one event. A stream is read with ``read1``
        (whatever has arrived, up to 64 KiB, without waiting for more), so a
        fast upstream's events come several to a batch and are relayed with
        one write, while a slow one's still go out one by one, as they come.
        """
        try:
            if not self.streamed:
                yield [self.json()]
                return
            raw = self._response
            pending = b""
            while True:
                data = raw.read1(READ_SIZE)
                if not data:
                    break
                lines = (pending + data).split(b"\n") if pending else data.split(b"\n")
                pending = lines.pop()  # an incomplete last line waits for the rest
                if len(pending) > self._max_line:  # a hostile upstream's endless line is not buffered forever
                    raise UpstreamUnavailableError(
                        f"the inference service at {self._url} sent a stream line longer than {self._max_line} "
                        "bytes (SGP_MAX_SSE_LINE_BYTES)",
                        code="upstream_response_too_large",
                    )
                payloads = [line[5:].strip() for line in lines if line.startswith(b"data:")]
                done = b"[DONE]" in payloads
                if done:
                    payloads = payloads[: payloads.index(b"[DONE]")]
                if payloads:
                    batch = _parse_events(payloads)
                    for i, event in enumerate(batch):
                        if "error" in event:
                            if i:
                                yield batch[:i]
                            raise _error_from_body(event, 502)
                    yield batch
                if done:
                    self._done = True
                    return
            log.warning("the inference service at %s ended the stream early", self._url)
            raise UpstreamUnavailableError("the inference service ended the stream early")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _transport_error(exc, self._url, "broke off the answer") from exc
        finally:
            self.close()

    def json(self) -> dict[str, Any]:
        """A whole answer's JSON body (the connection goes back to the pool)."""
        try:
            body = _json(self._response, self._url, self._max_bytes)
            self.read_whole = True
            return body
        finally:
            self.close()

    def close(self) -> None:
        """The connection back to the pool when the answer was read to its end, else closed
        (a half-read answer, or one cut by an error, would poison the next request on it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done:
            self.read_whole = _read_to_end(self._response, conn)
        if self.read_whole and self._response.closed and conn.sock is not None:  # None: the server closed it
            self._pool.give_back(conn)
        else:
            self._response.close()
            conn.close()


class ConnectionPool:
    """Idle keep-alive connections to the upstream: urllib3's connection and response classes, no pool logic.

    Why not ``requests.Session.post`` or urllib3's ``HTTPConnectionPool.urlopen``:
    per call they merge settings, build request and response wrappers, scan
    for cookies, resolve retries, redirects and proxies (none of which this
    client uses: prompts never go through a proxy), about 1.3 ms on a 2-core
    VM for ``Session.post`` and 0.3 ms for ``urlopen`` (measured in situ; see
    docs/benchmarks.md). Here a request takes an idle connection (one the
    server dropped meanwhile is replaced), and one whose answer was read to
    its end comes back. TLS is verified against certifi's CA bundle (the one requests uses).
    """

    def __init__(self, base_url: str, connect_timeout: float, maxsize: int) -> None:
        url = urllib3.util.parse_url(base_url)
        tls = url.scheme == "https"
        connection_class = urllib3.connection.HTTPSConnection if tls else urllib3.connection.HTTPConnection
        options: dict[str, Any] = {"ca_certs": certifi.where()} if tls else {}
        host = url.host or ""  # settings accept only http(s) URLs, which have a host
        self._new = partial(connection_class, host, url.port, timeout=connect_timeout, **options)
        self._idle: deque[urllib3.connection.HTTPConnection] = deque()  # append and pop are thread-safe
        self._maxsize = maxsize

    def take(self) -> urllib3.connection.HTTPConnection:
        while True:
            try:
                conn = self._idle.pop()  # the most recent: the least likely to have been dropped
            except IndexError:
                return self._new()
            if conn.is_connected:
                return conn
            conn.close()

    def give_back(self, conn: urllib3.connection.HTTPConnection) -> None:
        if len(self._idle) < self._maxsize:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class UpstreamClient:
    """One pool of upstream connections per worker, shared by its threads."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        basic_auth: tuple[str, str] | None = None,
        pool_size: int = 64,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
        headers_to_add: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        self.max_line_bytes = max_line_bytes
        self._path = urllib3.util.parse_url(self.base_url).path or ""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.basic_auth = basic_auth
        self._pool = ConnectionPool(self.base_url, connect_timeout, pool_size)
        self._headers = {
            "User-Agent": f"stained-glass-proxy urllib3/{urllib3.__version__}",
            "Accept": "*/*",
            "Accept-Encoding": "identity",  # streams are read raw, as they arrive: nothing to decompress
            "Content-Type": "application/json",
        }
        if basic_auth:
            self._headers["Authorization"] = make_headers(basic_auth=":".join(basic_auth))["authorization"]
        # SGP_REQUEST_HEADERS_TO_ADD: on every request, over any forwarded header of the same name (any case)
        self._added = dict(headers_to_add or {})
        self._added_names = {name.lower() for name in self._added}

    def post(self, path: str, payload: dict[str, Any], headers: Mapping[str, str], streamed: bool) -> UpstreamReply:
        """POST ``payload`` (its :class:`PromptEmbeds` streamed) to ``path``: ``/v1/completions`` or
        ``/v1/chat/completions``; raises for transport failures and error statuses."""
        body = EmbedsBody(payload)
        # a small body is joined: headers and body leave in one send, not one per piece
        data = b"".join(body) if len(body) <= SMALL_BODY else body
        return self._send("POST", path, headers, data=data, streamed=streamed)

    def get_models(self, headers: Mapping[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self._send("GET", "/v1/models", headers or {}, timeout=timeout).json()

    def close(self) -> None:
        self._pool.close()

    def _send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        timeout: float | None = None,
        data: EmbedsBody | bytes | None = None,
        streamed: bool = False,
    ) -> UpstreamReply:
        """One request; the answer's body is left unread (the caller reads or streams it, then closes it)."""
        request_headers = {**self._headers, **headers}
        if self.basic_auth is not None:  # the configured credentials win over anything forwarded
            request_headers["Authorization"] = self._headers["Authorization"]
        if self._added:
            request_headers = {k: v for k, v in request_headers.items() if k.lower() not in self._added_names}
            request_headers.update(self._added)
        if data is not None:
            request_headers["Content-Length"] = str(len(data))
        conn = self._pool.take()
        try:
            conn.timeout = timeout or self.connect_timeout  # a new connection connects within this
            url = self._path + path
            conn.request(method, url, body=data, headers=request_headers, preload_content=False, decode_content=False)
            conn.timeout = timeout or self.read_timeout  # set on the socket by getresponse
            response = conn.getresponse()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            conn.close()
            raise _transport_error(exc, self.base_url, "is unreachable") from exc
        except BaseException:  # a deferred transform failed mid-body: the half-sent request must not be reused
            conn.close()
            raise
        reply = UpstreamReply(
            response, conn, self._pool, self.base_url, streamed, self.max_response_bytes, self.max_line_bytes
        )
        if response.status >= 400:
            try:
                raw = response.read(self.max_response_bytes + 1)
                reply.read_whole = len(raw) <= self.max_response_bytes
                body = json.loads(raw) if reply.read_whole else {"error": {"message": "(the error body was too large)"}}
            except ValueError:
                body = {"error": {"message": raw[:500].decode("utf-8", "replace")}}
            except (urllib3.exceptions.HTTPError, OSError):
                body = {"error": {"message": "(the error body could not be read)"}}
            finally:
                reply.close()
            raise _error_from_body(body, response.status)
        return reply


def _transport_error(exc: BaseException, url: str, what: str) -> ProxyError:
    """A urllib3 or socket failure as a proxy error: a timeout is 504, anything else 502.

    The client's message does not name the upstream's address (that is the
    operator's business, not the caller's); the log does, at WARNING.
    """
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        what = "is unreachable"
    elif isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        what = "did not accept a connection"
    elif isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        log.warning("the inference service at %s timed out (%s)", url, type(exc).__name__)
        return UpstreamTimeoutError("the inference service timed out")
    log.warning("the inference service at %s %s (%s)", url, what, type(exc).__name__)
    return UpstreamUnavailableError(f"the inference service {what}")


def _read_to_end(response: urllib3.BaseHTTPResponse, conn: urllib3.connection.HTTPConnection) -> bool:
    """Read the end of a stream after its ``[DONE]`` (the last chunk marker), so its connection can be reused.

    vLLM ends the response right after ``[DONE]``: this takes microseconds.
    An upstream that keeps sending or stalls gets ``END_OF_STREAM_SECONDS`` in
    all, then its connection is closed instead (by :meth:`UpstreamReply.close`). True when the end came.
    """
    sock = conn.sock
    if sock is None:  # the server said it closes the connection: nothing to keep
        return False
    deadline = time.monotonic() + END_OF_STREAM_SECONDS
    try:
        while not response.closed and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not response.read1(READ_SIZE):
                return True
    except (urllib3.exceptions.HTTPError, OSError):
        return False
    return response.closed


def _parse_events(payloads: list[bytes]) -> list[Any]:
    """The JSON of several SSE ``data:`` payloads, parsed as one array (one parser call, not one each)."""
    if len(payloads) == 1:
        return [json.loads(payloads[0])]
    try:
        return json.loads(b"[" + b",".join(payloads) + b"]")
    except ValueError:  # one of them is not JSON (or is several values): raise at the first bad one
        return [json.loads(p) for p in payloads]


def _json(response: urllib3.BaseHTTPResponse, url: str, limit: int = MAX_RESPONSE_BYTES) -> dict[str, Any]:
    """The answer's JSON body, read to its end: at most ``limit`` bytes (a 502 beyond)."""
    try:
        raw = response.read(limit + 1)
        if len(raw) > limit:
            raise UpstreamUnavailableError(
                f"the inference service at {url} answered with more than {limit} bytes "
                "(SGP_MAX_UPSTREAM_RESPONSE_BYTES)",
                code="upstream_response_too_large",
            )
        return json.loads(raw)
    except ValueError as exc:
        log.warning("the inference service at %s answered with something other than JSON", url)
        raise UpstreamUnavailableError("the inference service answered with something other than JSON") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _transport_error(exc, url, "broke off the answer") from exc


def _error_from_body(body: Any, status: int) -> ProxyError:
    """An upstream error body (OpenAI/vLLM or FastAPI shape) as an exception with its status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "the inference service reported an error")
        kind = error.get("type")
    else:
        message = str(error or (body.get("detail") if isinstance(body, dict) else None) or body)[:500]
        kind = None
    log.warning("upstream answered %s", status)
    return UpstreamError(f"inference service: {message}", status=status, type=kind or "upstream_error", code=status)
