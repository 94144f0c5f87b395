"""HTTP layer: Flask routes for /health, /v1/models, /v1/completions and /v1/chat/completions (whole or SSE).

Only parsing, auth, shaping and logging live here; the model work is in
``generation`` (one loop for both endpoints: only the answer's shape differs,
see ``protocol.response_shape``) and every outgoing text piece goes through
the request's ``piece_filter`` (see ``output_filter``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from inference_server.errors import ApiError, error_body
from inference_server.generation import Engine, Step, TokenLogprob
from inference_server.output_filter import PieceFilter, make_piece_filter
from inference_server.protocol import (
    CompletionRequest,
    CompletionShape,
    parse_chat_request,
    parse_completion_request,
    response_shape,
    usage,
)

log = logging.getLogger("inference_server")

MAX_BODY_BYTES = 512 * 1024 * 1024


@dataclass
class ServerSettings:
    """What the HTTP layer needs from the command line."""

    served_model_name: str
    api_key: str | None = None
    output_protection: bool = False
    script: Any = None  # inference_server.script.Script in scripted mode (POST /script fills it)


def _json_error(err: ApiError) -> Response:
    response = jsonify(err.to_dict())
    response.status_code = err.status
    return response


def _sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _jobs(req: CompletionRequest) -> Iterator[tuple[int, int, Any]]:
    """(choice index, prompt index, choice params): vLLM numbers choices prompt-major."""
    for p_idx in range(len(req.prompts)):
        for i in range(req.n):
            yield p_idx * req.n + i, p_idx, req.choice_params(i)


def create_app(engine: Engine, settings: ServerSettings) -> Flask:
    """Build the Flask app around an engine (model or null)."""
    app = Flask("inference_server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    started = int(time.time())

    @app.before_request
    def _check_api_key() -> Response | None:
        if settings.api_key is None or not request.path.startswith("/v1"):
            return None
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            return _json_error(ApiError("Unauthorized", status=401))
        return None

    @app.after_request
    def _correlation_header(response: Response) -> Response:
        rid = request.headers.get("X-Request-ID")
        if rid:
            response.headers["X-Request-ID"] = rid
        return response

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        log.info("request path=%s status=%d error=%s", request.path, err.status, err.message[:200])
        return _json_error(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        return _json_error(ApiError(err.description or err.name, status=err.code or 500))

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("request path=%s status=500 unexpected error", request.path)
        return _json_error(ApiError(f"internal error: {type(err).__name__}", status=500))

    @app.get("/health")
    def health() -> Response:
        return Response(status=200)

    @app.get("/v1/models")
    def models() -> Response:
        name = settings.served_model_name
        return jsonify(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": started,
                        "owned_by": "inference_server",
                        "root": name,
                        "parent": None,
                        "max_model_len": engine.max_model_len,
                    }
                ],
            }
        )

    if settings.script is not None:

        @app.post("/script")
        def push_script() -> Response:
            """Scripted mode: queue answers, one per generated choice, whatever the prompt."""
            body = request.get_json(silent=True)
            answers = body.get("answers") if isinstance(body, dict) else None
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise ApiError('the body must be {"answers": [string, ...]}', param="answers")
            return jsonify({"queued": settings.script.push(answers)})

    @app.post("/v1/completions")
    def completions() -> Response:
        return _generate(parse_completion_request)

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        return _generate(parse_chat_request)

    def _generate(parse: Callable[[object, Engine, str], CompletionRequest]) -> Response:
        t0 = time.monotonic()
        correlation = request.headers.get("X-Request-ID", "-")
        body = request.get_json(silent=True)
        if body is None:
            raise ApiError("request body must be a JSON object (Content-Type: application/json)")
        req = parse(body, engine, settings.served_model_name)
        shape = response_shape(req)
        response_id = f"{shape.id_prefix}-{uuid.uuid4().hex}"
        choice = make_piece_filter(settings.output_protection, request.headers, len(req.prompts) * req.n)
        if choice.protected and req.params.logprobs is not None:
            raise ApiError(
                "logprobs are not available with output protection: their tokens would travel in plain text",
                param="logprobs",
            )
        created = int(time.time())
        prompt_tokens = sum(p.num_tokens for p in req.prompts)
        logger = _RequestLog(response_id, correlation, prompt_tokens, t0)
        answer = _Answer(engine, req, shape, response_id, created, choice.piece_filter, logger)
        if req.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **choice.headers}
            return Response(_stream(answer), mimetype="text/event-stream", headers=headers)
        response = jsonify(_whole(answer))
        response.headers.update(choice.headers)
        logger.done(200)
        return response

    return app


class _RequestLog:
    """One INFO line per request; counts only, never text or embeddings."""

    def __init__(self, response_id: str, correlation: str, prompt_tokens: int, t0: float) -> None:
        self.response_id = response_id
        self.correlation = correlation
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.t0 = t0

    def done(self, status: int | str) -> None:
        log.info(
            "completion id=%s request_id=%s status=%s prompt_tokens=%d completion_tokens=%d seconds=%.3f",
            self.response_id,
            self.correlation,
            status,
            self.prompt_tokens,
            self.completion_tokens,
            time.monotonic() - self.t0,
        )


@dataclass
class _Answer:
    """What generating one answer needs, for either endpoint."""

    engine: Engine
    req: CompletionRequest
    shape: CompletionShape
    response_id: str
    created: int
    piece_filter: PieceFilter
    logger: _RequestLog


def _whole(a: _Answer) -> dict[str, Any]:
    choices = []
    for index, p_idx, params in _jobs(a.req):
        pieces: list[str] = []
        infos: list[TokenLogprob] = []
        last = Step("")
        for last in a.engine.generate(a.req.prompts[p_idx], params):
            a.logger.completion_tokens += 1
            pieces.append(last.piece)
            infos.extend(last.logprobs)
        text = a.piece_filter(a.response_id, index, "".join(pieces), True)
        wanted = infos if params.logprobs is not None else None
        choices.append(a.shape.choice(index, text, wanted, last.finish_reason, last.stop_reason))
    total = usage(sum(p.num_tokens for p in a.req.prompts), a.logger.completion_tokens)
    return a.shape.envelope(a.response_id, a.created, a.req.model, choices, total)


def _stream(a: _Answer) -> Iterator[str]:
    """SSE events; closing this generator (client gone) stops generation at once."""
    status: int | str = 200
    req = a.req
    try:
        for index, p_idx, params in _jobs(req):
            opening = a.shape.role_choice(index)
            if opening is not None:
                yield _sse(a.shape.envelope(a.response_id, a.created, req.model, [opening], None))
            pending: list[TokenLogprob] = []
            with contextlib.closing(a.engine.generate(req.prompts[p_idx], params)) as steps:
                for step in steps:
                    a.logger.completion_tokens += 1
                    pending.extend(step.logprobs)
                    if not step.piece and step.finish_reason is None:
                        continue  # text held back (partial character or possible stop string)
                    wanted = pending if params.logprobs is not None else None
                    pending = []
                    last = step.finish_reason is not None
                    text = a.piece_filter(a.response_id, index, step.piece, last)
                    chunk_choice = a.shape.choice(index, text, wanted, step.finish_reason, step.stop_reason)
                    yield _sse(a.shape.envelope(a.response_id, a.created, req.model, [chunk_choice], None))
        if req.include_usage:
            total = usage(sum(p.num_tokens for p in req.prompts), a.logger.completion_tokens)
            yield _sse(a.shape.envelope(a.response_id, a.created, req.model, [], total))
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        status = "499 (client closed)"
        raise
    except Exception as exc:
        status = 500
        log.exception("completion id=%s stream failed", a.response_id)
        yield _sse(error_body(f"internal error: {type(exc).__name__}", 500))
        yield "data: [DONE]\n\n"
    finally:
        a.logger.done(status)
