"""Wiring: settings, logging, the SGT, the upstream client, blueprints, errors, docs."""

from __future__ import annotations

import atexit
import json
import logging
import uuid

import torch
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from proxy import api, metrics
from proxy.api.openapi import install as install_docs
from proxy.errors import (
    BadRequestError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
)
from proxy.logs import configure_logging
from proxy.serving import CompletionService
from proxy.settings import Settings
from proxy.sgt import SGTRuntime, TemplateRefusedError
from proxy.upstream import UpstreamClient
from sgop import KeyRing

log = logging.getLogger("proxy")


def build_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.logging_config_file)
    torch.set_num_threads(settings.torch_threads)
    sgt = SGTRuntime.load(settings.sgt_path, device=settings.device, max_concurrent=settings.max_concurrent_transforms)
    upstream = UpstreamClient(
        settings.inference_service_host,
        settings.upstream_connect_timeout_seconds,
        settings.upstream_timeout_seconds,
        basic_auth=settings.upstream_basic_auth,
    )
    keyring = _start_keyring(settings)

    app = Flask("proxy")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["sgp.settings"] = settings
    app.extensions["sgp.service"] = CompletionService(settings, sgt, upstream, keyring)
    app.extensions["sgp.keyring"] = keyring
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
    @app.before_request
    def _correlation_id() -> None:
        g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex

    @app.after_request
    def _tag(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        return response


def _install_error_handlers(app: Flask) -> None:
    def _answer(exc: ProxyError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, type(exc).__name__)
        return Response(json.dumps(exc.to_dict()), status=exc.status, mimetype="application/json")

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
