"""Logging: the configured dictConfig (or the default format) and the correlation id.

Log lines carry the request's correlation id; they never carry prompt text,
completion text, embeddings, keys or passwords.
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import yaml
from flask import g, has_request_context

DEFAULT_FORMAT = "%(asctime)s | %(name)-40s | %(levelname)-8s | %(correlation_id)-32s | %(message)s"
PROBE_PATHS = ("/livez", "/readyz")
ACCESS_REQUEST_ID = "{x-request-id}o"  # gunicorn's atom for the response's X-Request-ID header


def _access_atoms(record: logging.LogRecord) -> Mapping[str, object] | None:
    """gunicorn's access-log atoms (the record's args), or None for any other record."""
    return record.args if record.name == "gunicorn.access" and isinstance(record.args, Mapping) else None


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id`` (the request's X-Request-ID, or "-") to every record.

    Inside a request it is Flask's ``g.request_id``; gunicorn's access log is
    written after the request, so there it is the ``X-Request-ID`` the proxy
    answered with.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            atoms = _access_atoms(record)
            if has_request_context():
                record.correlation_id = g.get("request_id", "-")
            elif atoms is not None:
                record.correlation_id = str(atoms.get(ACCESS_REQUEST_ID) or "-")
            else:
                record.correlation_id = "-"
        return True


class HealthCheckFilter(logging.Filter):
    """Drops the access-log lines of successful probes: kubelet polls them every few seconds.

    A failed probe (status 400 or more) is kept: that is the line an operator wants.
    """

    def __init__(self, paths: Iterable[str] = PROBE_PATHS) -> None:
        super().__init__()
        self.paths = frozenset(paths)

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = _access_atoms(record)
        if atoms is None or atoms.get("U") not in self.paths:
            return True
        try:
            return int(str(atoms.get("s"))) >= 400
        except ValueError:
            return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers; the same fields as the text format.

    gunicorn's access lines also get their fields (method, path, status,
    duration) as ``http``, so a shipper need not parse the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            "level": record.levelname,
            "correlation_id": getattr(record, "correlation_id", "-"),
            "message": record.getMessage(),
        }
        atoms = _access_atoms(record)
        if atoms is not None:
            out["http"] = {
                "method": atoms.get("m"),
                "path": atoms.get("U"),
                "status": _int(atoms.get("s")),
                "bytes": _int(atoms.get("B")),
                "duration_ms": _int(atoms.get("M")),
                "remote": atoms.get("h"),
            }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def configure_logging(config_file: str | None) -> None:
    """Apply ``SGP_LOGGING_CONFIG_FILE`` (YAML dictConfig) or the default format at INFO."""
    if config_file:
        with Path(config_file).open(encoding="utf-8") as fh:
            logging.config.dictConfig(yaml.safe_load(fh))
        return
    root = logging.getLogger()
    if not any(isinstance(f, CorrelationIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(DEFAULT_FORMAT))
        handler.addFilter(CorrelationIdFilter())
        root.handlers = [handler]
    root.setLevel(logging.INFO)
