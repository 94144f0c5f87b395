"""What every blueprint shares: strict JSON parsing, the service handle, answering."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

from flask import Response, current_app, g, request, stream_with_context
from pydantic import BaseModel, ValidationError
from werkzeug.datastructures import Headers

from proxy.errors import BadRequestError, InternalError, ProxyError
from proxy.openai_types import request_error
from proxy.serving import CompletionService, ServedResponse

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def service() -> CompletionService:
    return current_app.extensions["sgp.service"]


def client_headers() -> Headers:
    """The client's headers (case-insensitive), with this request's correlation id for the upstream."""
    headers = Headers(request.headers)
    headers["X-Request-ID"] = g.request_id
    return headers


def _no_constants(name: str) -> Any:
    raise BadRequestError(f"{name} is not valid JSON", code="invalid_json")


def parse_body(model: type[Model]) -> Model:
    """The request body as ``model``: strict UTF-8, strict JSON (no NaN or Infinity), validated."""
    raw = request.get_data(cache=False)
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
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


def answer(served: ServedResponse) -> Response:
    """A whole JSON answer, or a server-sent-event stream; both come from the same events."""
    if not served.streamed:
        body = next(served.events)
        served.events.close()
        return Response(json.dumps(body), mimetype="application/json", headers=served.headers)
    return Response(
        stream_with_context(_sse(served.events)),
        mimetype="text/event-stream",
        headers={**SSE_HEADERS, **served.headers},
    )


def _sse(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Events as SSE; an error after the start is an error event, and ``[DONE]`` always ends it."""
    try:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
    except ProxyError as exc:
        log.warning("stream failed: %s (%s)", type(exc).__name__, exc.status)
        yield f"data: {json.dumps(exc.to_dict())}\n\n"
    except Exception:
        log.exception("stream failed")
        yield f"data: {json.dumps(InternalError('internal error').to_dict())}\n\n"
    finally:
        events.close()
    yield "data: [DONE]\n\n"
