"""Wiring: settings, logging, the SGT, the upstream client, blueprints, errors, docs."""

from __future__ import annotations

import atexit
import json
import logging
import re
import uuid

import torch
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from proxy import api, metrics, tracing
from proxy.api.openapi import install as install_docs
from proxy.auth import ClientKeys
from proxy.errors import (
    AuthenticationError,
    BadRequestError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
    UnsupportedMediaTypeError,
)
from proxy.logs import configure_logging
from proxy.serving import CompletionService
from proxy.settings import Settings, traces_exporter
from proxy.sgt import SGTRuntime, TemplateRefusedError
from proxy.upstream import UpstreamClient
from sgop import KeyRing

log = logging.getLogger("proxy")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's X-Request-ID is kept only in this shape


def build_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.logging_config_file)
    tracing.configure(traces_exporter())  # off unless the OTEL_* variables ask for it
    torch.set_num_threads(settings.torch_threads)
    sgt = SGTRuntime.load(
        settings.sgt_path,
        device=settings.device,
        max_concurrent=settings.max_concurrent_transforms,
        noise_scale=settings.noise_scale,
    )
    upstream = UpstreamClient(
        settings.inference_service_host,
        settings.upstream_connect_timeout_seconds,
        settings.upstream_timeout_seconds,
        basic_auth=settings.upstream_basic_auth,
        max_response_bytes=settings.max_upstream_response_bytes,
        max_line_bytes=settings.max_sse_line_bytes,
        headers_to_add=settings.upstream_headers_to_add,
    )
    keyring = _start_keyring(settings)

    app = Flask("proxy")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["sgp.settings"] = settings
    app.extensions["sgp.service"] = CompletionService(settings, sgt, upstream, keyring)
    app.extensions["sgp.keyring"] = keyring
    app.extensions["sgp.client_keys"] = ClientKeys(settings.client_key_digests())
    api.register(app)
    install_docs(app)
    _install_request_hooks(app)
    _install_error_handlers(app)
    log.info(
        "proxy ready: SGT %s (%s, hidden %d) on %s, upstream %s",
        settings.sgt_path,
        sgt.model_info.get("name"),
        sgt.hidden_size,
        settings.device,
        settings.inference_service_host,
    )
    return app


def _start_keyring(settings: Settings) -> KeyRing | None:
    if not settings.output_decryption:
        return None
    keyring = KeyRing(on_refresh=metrics.key_refreshed)  # refreshes counted for /metrics
    keyring.start_refresh(settings.ephemeral_key_refresh_time_seconds)
    atexit.register(keyring.stop)  # one scheduler per worker process, stopped when it exits
    return keyring


def _install_request_hooks(app: Flask) -> None:
    client_keys: ClientKeys = app.extensions["sgp.client_keys"]

    @app.before_request
    def _correlation_id() -> None:
        """The client's X-Request-ID when it is a safe token (it reaches logs), else a fresh one."""
        given = request.headers.get("X-Request-ID")
        g.request_id = given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

    @app.before_request
    def _gate() -> None:
        """A client key when keys are configured, then JSON for every POST body (415 stops cross-site form posts)."""
        if client_keys.required and client_keys.protects(request.path):
            if not client_keys.accepts(request.headers.get("Authorization")):
                raise AuthenticationError(
                    "a valid API key is required: send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
        if request.method == "POST" and request.url_rule is not None and not _is_json(request.mimetype):
            raise UnsupportedMediaTypeError(
                f"the request body must be JSON (Content-Type: application/json), not {request.mimetype or 'none'!r}"
            )

    @app.after_request
    def _tag(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        return response


def _install_error_handlers(app: Flask) -> None:
    def _answer(exc: ProxyError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, type(exc).__name__)
        response = Response(json.dumps(exc.to_dict()), status=exc.status, mimetype="application/json")
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    app.register_error_handler(ProxyError, _answer)
    app.register_error_handler(
        TemplateRefusedError, lambda exc: _answer(BadRequestError(str(exc), param="messages", code="invalid_messages"))
    )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            limit = app.config["MAX_CONTENT_LENGTH"]
            return _answer(PayloadTooLargeError(f"the request body is larger than {limit} bytes"))
        if exc.code == 404:
            return _answer(NotFoundError(f"no such endpoint: {request.method} {request.path}"))
        if exc.code == 405:
            return _answer(MethodNotAllowedError(f"{request.method} is not allowed on {request.path}"))
        error = BadRequestError(exc.description or exc.name, code=exc.name.lower().replace(" ", "_"))
        error.status = exc.code or 400
        return _answer(error)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _answer(InternalError("internal error"))


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
