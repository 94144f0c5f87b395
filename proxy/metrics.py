"""Prometheus metrics, right under several gunicorn workers.

Every metric is defined here, once. Under gunicorn, ``gunicorn.conf.py`` sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module, so each
worker writes its samples to files there and :func:`render` sums them: any
worker answering ``GET /metrics`` reports the whole server. Without that
variable (tests that build the app in-process) the default registry is used.

Labels are bounded: ``endpoint`` is a route pattern (or ``unmatched``), never a
raw path; ``method`` is GET, POST, HEAD, OPTIONS or ``other``; nothing about a
prompt or an answer becomes a label.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from proxy.errors import (
    OutputProtectionFailedError,
    ProxyError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter(
    "sgp_requests", "HTTP requests answered, by route, method and status", ["endpoint", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "sgp_request_duration_seconds",
    "Total time of a request, until its last byte is sent (a whole stream included)",
    ["endpoint"],
    buckets=SLOW_BUCKETS,
)
IN_PROGRESS = Gauge(
    "sgp_requests_in_progress", "Requests being served now, all workers summed", multiprocess_mode="livesum"
)
TRANSFORM_SECONDS = Histogram(
    "sgp_transform_duration_seconds",
    "Time to obfuscate a request's prompt embeddings with the SGT",
    ["endpoint"],
    buckets=FAST_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "sgp_upstream_response_seconds",
    "Time from calling the inference service (the prompt embeddings sent as they are encoded) to its response headers",
    ["endpoint"],
    buckets=SLOW_BUCKETS,
)
TTFT_SECONDS = Histogram(
    "sgp_time_to_first_token_seconds",
    "Streamed answers: time from the request reaching the service to the first chunk that carries text",
    ["endpoint"],
    buckets=SLOW_BUCKETS,
)
CHUNKS = Counter("sgp_stream_chunks", "Server-sent-event chunks relayed to clients", ["endpoint"])
TOKENS = Counter(
    "sgp_completion_tokens",
    "Completion tokens relayed (the upstream's usage; a stream without usage counts its chunks that carry text)",
    ["endpoint"],
)
UPSTREAM_ERRORS = Counter(
    "sgp_upstream_errors",
    "Failed upstream calls: unreachable, timeout, http_<status>, output_protection",
    ["endpoint", "reason"],
)
KEY_REFRESHES = Counter(
    "sgp_output_protection_key_refreshes", "Output-protection key pairs swapped in by the refresh schedule"
)


METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label: a known method, else ``other`` (a client's made-up method is no new series)."""
    return method if method in METHODS else "other"


_local = threading.local()


def begin_request() -> None:
    """From here until :func:`apply_deferred`, this thread's metric updates wait (see :func:`_record`).

    Why: each update of a multiprocess metric takes a lock and writes a
    memory-mapped file; a whole answer made ~10 of them before its bytes
    left, 0.3 ms on a 2-core VM (docs/benchmarks.md). Deferred, they are
    applied once the answer is sent (or, for a stream, after each batch).
    Updates left over by a request that never finished are applied first.
    """
    apply_deferred()
    _local.pending = []


def apply_deferred() -> None:
    """Apply this thread's waiting updates now; until the next :func:`begin_request`, updates apply at once."""
    pending = getattr(_local, "pending", None)
    _local.pending = None
    for update, value in pending or ():
        update(value)


def _record(update: Callable[[float], None], value: float) -> None:
    """``update(value)`` now, or once the response is sent when inside a request."""
    pending = getattr(_local, "pending", None)
    if pending is None:
        update(value)
    else:
        pending.append((update, value))


def render() -> bytes:
    """The exposition text: all workers' samples when in multiprocess mode, else this process's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def upstream_reason(exc: BaseException) -> str | None:
    """The ``reason`` label for an upstream failure, or None when ``exc`` is not one."""
    if isinstance(exc, UpstreamUnavailableError):
        return "unreachable"
    if isinstance(exc, UpstreamTimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamError):
        return f"http_{exc.status}"
    if isinstance(exc, OutputProtectionFailedError):
        return "output_protection"
    return None


def _count_upstream_error(endpoint: str, exc: BaseException) -> None:
    reason = upstream_reason(exc)
    if reason is not None:
        UPSTREAM_ERRORS.labels(endpoint, reason).inc()


@contextmanager
def upstream_call(kind: str) -> Iterator[None]:
    """Time a call to the inference service up to its headers; count it if it fails."""
    endpoint = ENDPOINTS.get(kind, kind)
    started = time.perf_counter()
    try:
        yield
    except ProxyError as exc:
        _count_upstream_error(endpoint, exc)
        raise
    _record(UPSTREAM_SECONDS.labels(endpoint).observe, time.perf_counter() - started)


@contextmanager
def transform(kind: str) -> Iterator[None]:
    """Time the SGT work of one request."""
    started = time.perf_counter()
    try:
        yield
    finally:  # a failed transform is timed too, as Histogram.time() did
        _record(TRANSFORM_SECONDS.labels(ENDPOINTS.get(kind, kind)).observe, time.perf_counter() - started)


class RelayedEvents:
    """Wraps a response's batches of shaped events: counts chunks and tokens, times the first token, counts failures.

    A class rather than a generator so that :meth:`close` always reaches the
    inner iterator (and so the upstream connection), even if never started.
    Counting is per batch (one counter update for all its chunks), not per chunk.
    """

    def __init__(self, batches: Iterator[list[dict[str, Any]]], kind: str, streamed: bool, started: float) -> None:
        self._batches = batches
        self._endpoint = ENDPOINTS.get(kind, kind)
        self._chunks = CHUNKS.labels(self._endpoint)
        self._streamed = streamed
        self._started = started
        self._first_token_seen = False
        self._text_chunks = 0
        self._usage_tokens: int | None = None
        self._done = False

    def __iter__(self) -> RelayedEvents:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        try:
            batch = next(self._batches)
        except StopIteration:
            self._finish()
            raise
        except Exception as exc:
            _count_upstream_error(self._endpoint, exc)
            self._finish()
            raise
        self._observe(batch)
        return batch

    def close(self) -> None:
        self._finish()
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()

    def _observe(self, batch: list[dict[str, Any]]) -> None:
        for event in batch:
            usage = event.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                self._usage_tokens = usage["completion_tokens"]
        if not self._streamed:
            return
        _record(self._chunks.inc, len(batch))
        if self._usage_tokens is not None and self._first_token_seen:
            return  # usage gives the token count: text chunks need not be counted
        for event in batch:
            if _carries_text(event):
                self._text_chunks += 1
                if not self._first_token_seen:
                    self._first_token_seen = True
                    _record(TTFT_SECONDS.labels(self._endpoint).observe, time.perf_counter() - self._started)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        tokens = self._usage_tokens if self._usage_tokens is not None else self._text_chunks
        if tokens:
            _record(TOKENS.labels(self._endpoint).inc, tokens)


def _carries_text(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("text") or (isinstance(delta, dict) and delta.get("content")):
            return True
    return False


def key_refreshed(_keypair: object) -> None:
    """The key ring's ``on_refresh`` callback: counts refreshes in ``sgp_output_protection_key_refreshes_total``."""
    KEY_REFRESHES.inc()
