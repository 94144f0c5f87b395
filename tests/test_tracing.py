"""OpenTelemetry tracing: the spans of a request, their GenAI attributes, and no content in any of them.

In-process (build_app and Flask's test client) against the real inference_server, with the SDK's
in-memory exporter; the upstream traffic goes through the recording relay.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy import tracing
from proxy.app import build_app
from proxy.settings import Settings
from tests.procs import ROOT
from tests.relay import LoopbackHTTPServer, RecordingRelay

CANARY = "zebra-canary-5150"  # in every prompt; must never be in a span
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_provider(provider)
    yield memory
    tracing.use_provider(None)
    provider.shutdown()


@pytest.fixture(scope="module")
def traced_client(tiny_sgt: Path, relay: RecordingRelay, exporter: InMemorySpanExporter) -> FlaskClient:
    settings = Settings(sgt_path=str(tiny_sgt), inference_service_host=relay.url, max_new_tokens=12)
    return build_app(settings).test_client()


def spans_text(spans: list[Any]) -> str:
    """Every name, attribute and event of the spans, as one string to search."""
    parts = []
    for span in spans:
        parts += [span.name, json.dumps(dict(span.attributes or {}), default=str), str(span.status.description)]
        for event in span.events:
            parts += [event.name, json.dumps(dict(event.attributes or {}), default=str)]
    return "\n".join(parts)


def by_name(spans: list[Any]) -> dict[str, Any]:
    return {span.name: span for span in spans}


def test_a_chat_is_one_trace_of_its_steps_with_genai_attributes_and_no_content(
    traced_client: FlaskClient, exporter: InMemorySpanExporter, relay: RecordingRelay
) -> None:
    exporter.clear()
    relay.clear()
    body = {
        "model": "my-model",
        "messages": [{"role": "system", "content": f"be brief {CANARY}"}, {"role": "user", "content": CANARY}],
        "max_tokens": 5,
        "temperature": 0.0,
    }
    answer = traced_client.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert answer.status_code == 200, answer.text
    completion = answer.get_json()["choices"][0]["message"]["content"]
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    root = named["POST /v1/chat/completions"]
    assert set(named) == {
        "POST /v1/chat/completions", "sgp.parse", "sgp.render", "sgp.transform", "chat tiny-llama", "sgp.relay"
    }  # fmt: skip
    assert {span.context.trace_id for span in spans} == {int(TRACEPARENT.split("-")[1], 16)}, "the client's trace"
    assert all(span.parent.span_id == root.context.span_id for span in spans if span is not root)
    assert named["chat tiny-llama"].kind.name == "CLIENT" and root.kind.name == "SERVER"

    attrs = root.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "my-model"
    assert attrs["gen_ai.request.max_tokens"] == 5 and attrs["gen_ai.request.temperature"] == 0.0
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 5
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    assert attrs["http.response.status_code"] == 200
    assert named["chat tiny-llama"].attributes["gen_ai.request.model"] == "tiny-llama"

    # the upstream call carried the trace on: traceparent names the client span
    client_span = named["chat tiny-llama"].context
    sent = relay.sent().decode("latin-1")
    assert re.search(rf"traceparent: 00-{client_span.trace_id:032x}-{client_span.span_id:016x}-01\r\n", sent)

    text = spans_text(spans)
    assert CANARY not in text and "be brief" not in text
    assert completion.strip() and completion.strip() not in text


def test_a_stream_ends_its_trace_when_relayed_and_completions_are_traced_too(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    body = {"model": "m", "prompt": [CANARY, f"{CANARY} again"], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    answer = traced_client.post("/v1/completions", json=body)
    streamed = answer.get_data(as_text=True)
    assert answer.status_code == 200 and streamed.rstrip().endswith("data: [DONE]")
    named = by_name(exporter.get_finished_spans())
    root = named["POST /v1/completions"]
    assert "text_completion tiny-llama" in named and "sgp.relay" in named
    assert root.attributes["gen_ai.operation.name"] == "text_completion"
    assert root.attributes["gen_ai.request.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == 8  # two prompts, 4 tokens each
    assert tuple(root.attributes["gen_ai.response.finish_reasons"]) == ("length", "length")
    assert named["sgp.relay"].end_time <= root.end_time
    assert CANARY not in spans_text(list(named.values()))


def test_a_refused_request_is_an_error_span_by_type_only(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    body = {"model": "m", "messages": [{"role": CANARY, "content": CANARY}], "temperature": "hot " + CANARY}
    answer = traced_client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    spans = exporter.get_finished_spans()
    root = by_name(spans)["POST /v1/chat/completions"]
    assert root.status.status_code.name == "ERROR" and root.attributes["http.response.status_code"] == 400
    assert root.attributes["error.type"] and CANARY not in spans_text(spans)


def test_an_error_inside_a_span_is_recorded_by_type_not_message(exporter: InMemorySpanExporter) -> None:
    """An exception's message may quote the request: neither its text nor an exception event is kept."""
    exporter.clear()
    with pytest.raises(ValueError), tracing.span("sgp.render"):
        raise ValueError(f"cannot render {CANARY}")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == "ValueError"
    assert not span.events and CANARY not in spans_text([span])


def test_tracing_off_wraps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off (the default): the hooks hand back what they were given, and no span is made."""
    monkeypatch.setattr(tracing, "_tracer", None)
    assert not tracing.enabled()
    events = iter([[{"id": "x"}]])
    assert tracing.relay(events) is events
    with tracing.span("sgp.parse") as nothing:
        assert nothing is None


def test_tracing_off_imports_no_opentelemetry() -> None:
    """Nothing of OpenTelemetry is loaded by a proxy that does not trace."""
    code = (
        "import sys; from proxy import app, tracing; from proxy.settings import traces_exporter; "
        "tracing.configure(traces_exporter({})); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


class OtlpReceiver(LoopbackHTTPServer):
    """An OTLP/HTTP traces endpoint on loopback that keeps what it is sent (protobuf, decoded)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[Any] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    export = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in export.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            owner.spans.extend((resource_spans.resource, span) for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)


def test_otel_variables_turn_tracing_on_in_a_real_gunicorn(launch_proxy: Any, upstream: Any) -> None:
    """The standard variables, the OTLP/HTTP exporter, a real collector endpoint on loopback."""
    receiver = OtlpReceiver()
    try:
        proxy = launch_proxy(
            upstream.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_SERVICE_NAME="sgp-under-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        body = {"model": "m", "messages": [{"role": "user", "content": CANARY}], "max_tokens": 3}
        assert requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(receiver.spans) < 6:
            time.sleep(0.1)
        names = {span.name for _, span in receiver.spans}
        assert {"POST /v1/chat/completions", "sgp.transform", "chat tiny-llama", "sgp.relay"} <= names, names
        resource = {a.key: a.value.string_value for a in receiver.spans[0][0].attributes}
        assert resource["service.name"] == "sgp-under-test"
        assert CANARY.encode() not in b"".join(span.SerializeToString() for _, span in receiver.spans)
    finally:
        receiver.close()
