"""OpenTelemetry tracing, off by default: spans for a request's steps, and never its text.

On when the standard ``OTEL_*`` variables ask (:func:`proxy.settings.traces_exporter`); spans go out
through the OTLP/HTTP exporter (or the console one), which reads its own ``OTEL_EXPORTER_OTLP_*``
variables. Off, nothing of OpenTelemetry is imported and each hook is a shared no-op.

One request is one trace:

- ``POST /v1/chat/completions`` (server span, the client's ``traceparent`` as its parent), with the
  GenAI semantic-convention attributes that carry no content: operation, requested model and
  parameters, input and output token counts, finish reasons, response id;
- children ``sgp.parse``, ``sgp.render``, ``sgp.transform``, ``{operation} {upstream model}`` (the
  upstream call, a client span whose ``traceparent`` goes upstream) and ``sgp.relay`` (the answer
  relayed, a whole stream included).

Nothing from a prompt, a message, a completion or an error message becomes a span name, an
attribute or an event: errors are recorded by type only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

OPERATIONS = {"chat": "chat", "completion": "text_completion"}  # gen_ai.operation.name

_tracer: Any = None  # an opentelemetry Tracer when tracing is on
_OFF: AbstractContextManager[None] = nullcontext()
_current: ContextVar[_RequestTrace | None] = ContextVar("sgp_request_trace", default=None)


def configure(exporter: str | None) -> None:
    """Turn tracing on for this process with ``exporter`` (``otlp`` or ``console``), or leave it off."""
    if exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter: Any = OTLPSpanExporter()
    else:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter = ConsoleSpanExporter()
    resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, else a name of ours
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "stained-glass-proxy"}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER; flushed at exit
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # OTEL_BSP_* tune the batches
    use_provider(provider)


def use_provider(provider: Any) -> None:
    """Trace through ``provider`` (an SDK TracerProvider; tests give one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("proxy") if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


class _RequestTrace:
    """The server span of the request in flight; the relay ends it when it takes over."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.handed_off = False

    def set(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def traced(route: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorates a view: its request is a server span, ended when the answer is whole or relayed."""

    def decorate(view: Callable[[], Any]) -> Callable[[], Any]:
        @functools.wraps(view)
        def wrapper() -> Any:
            if _tracer is None:
                return view()
            return _traced_call(view, route)

        return wrapper

    return decorate


def _traced_call(view: Callable[[], Any], route: str) -> Any:
    from flask import request
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(request.headers)
    span = _tracer.start_span(
        f"POST {route}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": route, "url.scheme": request.scheme},
    )
    holder = _RequestTrace(span)
    token = context.attach(trace.set_span_in_context(span, parent))
    request_token = _current.set(holder)
    try:
        response = view()
    except BaseException as exc:
        span.set_attribute("http.response.status_code", int(getattr(exc, "status", 500)))
        _fail(span, exc)
        span.end()
        raise
    finally:
        _current.reset(request_token)
        context.detach(token)
    if not holder.handed_off:  # else the relay ends it, with the answer
        span.set_attribute("http.response.status_code", response.status_code)
        span.end()
    return response


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the request in flight (a no-op when tracing is off)."""
    if _tracer is None:
        return _OFF
    return _child(name)


@contextmanager
def _child(name: str, kind: Any = None, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    from opentelemetry import trace

    with _tracer.start_as_current_span(
        name,
        kind=kind or trace.SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=False,  # its event would hold the message, which may quote the request
        set_status_on_exception=False,  # its description too: _fail records the type only
    ) as child:
        try:
            yield child
        except BaseException as exc:
            _fail(child, exc)
            raise


def request_attributes(kind: str, request: Any, prompts: list[Any], max_tokens: int) -> None:
    """The GenAI request attributes of the request in flight: names and numbers, no content."""
    holder = _current.get() if _tracer is not None else None
    if holder is None:
        return
    input_tokens = sum(len(prompt) for prompt in prompts)
    holder.set(
        {
            "gen_ai.operation.name": OPERATIONS.get(kind, kind),
            "gen_ai.request.model": getattr(request, "model", None),
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.temperature": getattr(request, "temperature", None),
            "gen_ai.request.top_p": getattr(request, "top_p", None),
            "gen_ai.request.stream": bool(getattr(request, "stream", False)),
            "gen_ai.usage.input_tokens": input_tokens,
        }
    )


def upstream_call(kind: str, model: str, headers: MutableMapping[str, str]) -> AbstractContextManager[Any]:
    """The upstream call's client span; its ``traceparent`` is put in ``headers``."""
    if _tracer is None:
        return _OFF
    return _upstream(kind, model, headers)


@contextmanager
def _upstream(kind: str, model: str, headers: MutableMapping[str, str]) -> Iterator[Any]:
    from opentelemetry import propagate, trace

    operation = OPERATIONS.get(kind, kind)
    attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
    with _child(f"{operation} {model}", trace.SpanKind.CLIENT, attributes) as client:
        propagate.inject(headers)
        yield client


def relay(events: Any) -> Any:
    """The answer's batches, wrapped in the ``sgp.relay`` span, which ends the request's span too."""
    holder = _current.get() if _tracer is not None else None
    if holder is None:
        return events
    return _Relay(events, holder)


class _Relay:
    """Iterates and closes like the batches it wraps; reads only ids, usage and finish reasons."""

    def __init__(self, events: Any, holder: _RequestTrace) -> None:
        from opentelemetry import trace

        holder.handed_off = True
        self._events = events
        self._holder = holder
        self._span = _tracer.start_span("sgp.relay", context=trace.set_span_in_context(holder.span))
        self._finish_reasons: list[str] = []
        self._response: dict[str, Any] = {}
        self._ended = False

    def __iter__(self) -> _Relay:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        try:
            batch = next(self._events)
        except StopIteration:
            self._end()
            raise
        except BaseException as exc:
            _fail(self._span, exc)
            _fail(self._holder.span, exc)
            self._end()
            raise
        for event in batch:
            self._observe(event)
        return batch

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            self._end()

    def _observe(self, event: dict[str, Any]) -> None:
        if "id" in event:
            self._response["gen_ai.response.id"] = str(event["id"])
        usage = event.get("usage")
        if isinstance(usage, dict):
            for key, name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
                if isinstance(usage.get(key), int):
                    self._response[f"gen_ai.usage.{name}"] = usage[key]
        for choice in event.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                self._finish_reasons.append(reason)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        attributes: dict[str, Any] = dict(self._response)
        if self._finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = self._finish_reasons
        for target in (self._span, self._holder.span):
            target.set_attributes(attributes)
        self._holder.span.set_attribute("http.response.status_code", 200)  # an answer relayed is a 200
        self._span.end()
        self._holder.span.end()


def _fail(target: Any, exc: BaseException) -> None:
    """An error by its type only: an exception's message may quote the request."""
    from opentelemetry.trace import Status, StatusCode

    target.set_attribute("error.type", type(exc).__name__)
    target.set_status(Status(StatusCode.ERROR))
