"""Logging: the configured dictConfig (or the default format) and the correlation id.

Log lines carry the request's correlation id; they never carry prompt text,
completion text, embeddings, keys or passwords.
"""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path

import yaml
from flask import g, has_request_context

DEFAULT_FORMAT = "%(asctime)s | %(name)-40s | %(levelname)-8s | %(correlation_id)-32s | %(message)s"


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id`` (the request's X-Request-ID, or "-") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


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
