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
import time
from collections.abc import Iterator
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


class RequestRecord:
    """One request's metric updates: serving and the HTTP layer fill it, the HTTP layer applies it once sent.

    The one way metrics are taken on the data path. Why collect rather than
    update at once: each update of a multiprocess metric takes a lock and
    writes a memory-mapped file; a whole answer made ~10 of them before its
    bytes left, 0.3 ms on a 2-core VM (docs/benchmarks.md). The HTTP layer
    calls :meth:`flush` after each streamed batch is written (a long stream's
    chunks show as it goes) and :meth:`finish` once the last byte is sent.
    Nothing of a prompt or an answer is kept: only times, counts and labels.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint  # a route pattern or "unmatched": the label of every update
        self.started = time.perf_counter()
        self._serving_from = self.started
        self._transforms: list[float] = []
        self._upstream: float | None = None
        self._chunks = 0
        self._ttft: float | None = None
        self._first_token_seen = False
        self._text_chunks = 0
        self._usage_tokens: int | None = None
        self._finished = False
        IN_PROGRESS.inc()

    # ---- filled by serving ----
    def serving(self) -> None:
        """The service starts on the request: time to first token counts from here."""
        self._serving_from = time.perf_counter()

    @contextmanager
    def transform(self) -> Iterator[None]:
        """Time SGT work: one observation per call (a prompt list's prompts are timed one by one)."""
        started = time.perf_counter()
        try:
            yield
        finally:  # a failed transform is timed too, as Histogram.time() did
            self._transforms.append(time.perf_counter() - started)

    @contextmanager
    def upstream(self) -> Iterator[None]:
        """Time a call to the inference service up to its headers; note the reason if it fails."""
        started = time.perf_counter()
        try:
            yield
        except ProxyError as exc:
            self.failed(exc)
            raise
        self._upstream = time.perf_counter() - started

    # ---- filled by the HTTP layer as it sends ----
    def sent(self, batch: list[dict[str, Any]], streamed: bool) -> None:
        """A batch of shaped events went to the client: chunks, the first token, the completion tokens."""
        for event in batch:
            usage = event.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                self._usage_tokens = usage["completion_tokens"]
        if not streamed:
            return
        self._chunks += len(batch)
        if self._usage_tokens is not None and self._first_token_seen:
            return  # usage gives the token count: text chunks need not be counted
        for event in batch:
            if _carries_text(event):
                self._text_chunks += 1
                if not self._first_token_seen:
                    self._first_token_seen = True
                    self._ttft = time.perf_counter() - self._serving_from

    def failed(self, exc: BaseException) -> None:
        """The request failed with ``exc``: counted in ``sgp_upstream_errors`` when the upstream's fault.

        Applied at once, not collected: failures are rare (no cost to the fast path), and a scrape right
        after the error answer must already count them.
        """
        reason = upstream_reason(exc)
        if reason is not None:
            UPSTREAM_ERRORS.labels(self.endpoint, reason).inc()

    # ---- applied by the HTTP layer ----
    def flush(self) -> None:
        """Apply the updates collected so far (one per metric, not one per chunk)."""
        endpoint = self.endpoint
        for seconds in self._transforms:
            TRANSFORM_SECONDS.labels(endpoint).observe(seconds)
        self._transforms = []
        if self._upstream is not None:
            UPSTREAM_SECONDS.labels(endpoint).observe(self._upstream)
            self._upstream = None
        if self._chunks:
            CHUNKS.labels(endpoint).inc(self._chunks)
            self._chunks = 0
        if self._ttft is not None:
            TTFT_SECONDS.labels(endpoint).observe(self._ttft)
            self._ttft = None

    def finish(self, method: str, status: int) -> None:
        """The last byte is sent: apply the rest, count the request and its tokens, time it whole. Once only."""
        if self._finished:
            return
        self._finished = True
        self.flush()
        tokens = self._usage_tokens if self._usage_tokens is not None else self._text_chunks
        if tokens:
            TOKENS.labels(self.endpoint).inc(tokens)
        IN_PROGRESS.dec()
        REQUESTS.labels(self.endpoint, method_label(method), str(status)).inc()
        REQUEST_SECONDS.labels(self.endpoint).observe(time.perf_counter() - self.started)


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
