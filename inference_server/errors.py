"""One error type that maps to vLLM/OpenAI error JSON, so every failure has one shape."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "BadRequestError",
    500: "InternalServerError",
    501: "NotImplementedError",
}


class ApiError(Exception):
    """An error that becomes ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        """The body vLLM sends: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.status, self.param)


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """Build the error JSON for ``status`` (also used for errors inside a stream)."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError"),
            "param": param,
            "code": status,
        }
    }
