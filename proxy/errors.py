"""One exception family; each maps to an OpenAI-shaped error body and status."""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    """Base of every error the proxy answers with: ``{"error": {...}}`` and ``status``."""

    status = 500
    type = "internal_error"
    code: str | int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequestError(ProxyError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(ProxyError):
    """No client key, or a wrong one, while ``SGP_CLIENT_API_KEYS`` is set (OpenAI answers the same way)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class UnsupportedMediaTypeError(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class NotFoundError(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(ProxyError):
    """The upstream answered with an error; its status and message are passed on."""

    type = "upstream_error"


class UpstreamUnavailableError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeoutError(ProxyError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class OutputProtectionFailedError(ProxyError):
    status = 500
    type = "output_protection_error"


class InternalError(ProxyError):
    status = 500
    type = "internal_error"
