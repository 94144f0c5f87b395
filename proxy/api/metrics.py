"""GET /metrics (Prometheus text format) and the per-request counters every route shares."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from proxy import metrics
from proxy.errors import NotFoundError

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Every worker's samples, summed (prometheus-client multiprocess mode under gunicorn).

    Not here when SGP_METRICS_PORT moves them to a port of their own (gunicorn.conf.py serves it).
    """
    if current_app.extensions["sgp.settings"].metrics_port is not None:
        raise NotFoundError(f"no such endpoint: {request.method} {request.path}")
    return Response(metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


@bp.before_app_request
def _start() -> None:
    """The request's metrics record: serving fills it, :func:`_count` applies it once the last byte is sent."""
    g.metrics = metrics.RequestRecord(request.url_rule.rule if request.url_rule is not None else "unmatched")


@bp.after_app_request
def _count(response: Response) -> Response:
    """Count and time the request when its last byte is sent, so a stream's whole life is measured."""
    record: metrics.RequestRecord | None = g.pop("metrics", None)
    if record is None:  # before_request did not run (e.g. an error raised before it)
        return response
    method, status = request.method, response.status_code
    response.call_on_close(lambda: record.finish(method, status))
    return response
