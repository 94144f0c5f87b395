"""What every blueprint shares: strict JSON parsing, the service handle, answering."""

from __future__ import annotations

import json
import json.encoder
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Response, current_app, g, request, stream_with_context
from pydantic import BaseModel, ValidationError

from proxy import metrics
from proxy.errors import BadRequestError, InternalError, ProxyError
from proxy.openai_types import request_error
from proxy.serving import FORWARDED_HEADERS, Batches, CompletionService, ServedResponse

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)


def _event_encoder() -> Callable[[Any], str]:
    """``json.dumps`` with its defaults, for the dicts this proxy builds: the C encoder made once, not per call.

    No circular-reference check (these events are parsed JSON and fresh dicts);
    otherwise byte for byte what ``json.dumps`` writes.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # CPython's C encoder (private)
    if c_make_encoder is None:
        return json.dumps
    plain = json.JSONEncoder()
    ascii_str = json.encoder.encode_basestring_ascii
    encode = c_make_encoder(None, plain.default, ascii_str, None, ": ", ", ", False, False, True)
    return lambda obj: "".join(encode(obj, 0))


_dumps = _event_encoder()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff: half of a UTF-16 pair
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def service() -> CompletionService:
    return current_app.extensions["sgp.service"]


def record() -> metrics.RequestRecord:
    """This request's metrics record (made by the metrics blueprint before the view runs)."""
    return g.metrics


def client_headers() -> dict[str, str]:
    """The client headers the service may forward upstream, and this request's correlation id.

    With client keys configured the client's ``Authorization`` is the proxy's
    own key and never goes upstream (which then gets Basic auth, or nothing).
    """
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    if current_app.extensions["sgp.client_keys"].required:
        headers.pop("Authorization", None)
    headers["X-Request-ID"] = g.request_id
    return headers


def _no_constants(name: str) -> Any:
    raise BadRequestError(f"{name} is not valid JSON", code="invalid_json")


def parse_body(model: type[Model]) -> Model:
    """The request body as ``model``: strict UTF-8, strict JSON (no NaN or Infinity), validated.

    A body without the NaN/Infinity spellings is first handed to pydantic's own
    JSON parser (one pass, no intermediate dicts); anything it refuses goes the
    strict way below, which gives every error its message.
    """
    raw = request.get_data(cache=False)
    if b"NaN" not in raw and b"Infinity" not in raw:
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the request body is not valid UTF-8", code="invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadRequestError(
            f"the request body is not valid JSON: {type(exc).__name__}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(raw):  # json.loads lets a lone surrogate through; the tokenizer would fail on it
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError(
                "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string", code="invalid_json"
            ) from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


def answer(served: ServedResponse) -> Response:
    """A whole JSON answer, or a server-sent-event stream; both come from the same events."""
    metered = record()
    if not served.streamed:
        try:
            batch = next(served.events)
        except Exception as exc:
            metered.failed(exc)
            raise
        served.events.close()
        metered.sent(batch, streamed=False)
        return Response(_dumps(batch[0]), mimetype="application/json", headers=served.headers)
    return Response(
        stream_with_context(_sse(served.events, metered)),
        mimetype="text/event-stream",
        headers={**SSE_HEADERS, **served.headers},
    )


def _sse(batches: Batches, metered: metrics.RequestRecord) -> Iterator[str]:
    """Events as SSE, one string (one write) per batch; an error after the start is an error event,
    and ``[DONE]`` always ends it."""
    try:
        for batch in batches:
            metered.sent(batch, streamed=True)
            yield "".join([f"data: {_dumps(event)}\n\n" for event in batch])
            metered.flush()  # the batch is sent: its metric updates go now
    except ProxyError as exc:
        metered.failed(exc)
        log.warning("stream failed: %s (%s)", type(exc).__name__, exc.status)
        yield f"data: {json.dumps(exc.to_dict())}\n\n"
    except Exception as exc:
        metered.failed(exc)
        log.exception("stream failed")
        yield f"data: {json.dumps(InternalError('internal error').to_dict())}\n\n"
    finally:
        batches.close()
    yield "data: [DONE]\n\n"
