"""GET /metrics (Prometheus text format) and the per-request counters every route shares."""

from __future__ import annotations

import time

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
    g.metrics_started = time.perf_counter()
    metrics.IN_PROGRESS.inc()
    metrics.begin_request()  # the request's other metric updates wait until its answer is sent


@bp.after_app_request
def _count(response: Response) -> Response:
    """Count and time the request when its last byte is sent, so a stream's whole life is measured."""
    started = g.pop("metrics_started", None)
    if started is None:  # before_request did not run (e.g. an error raised before it)
        return response
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method, status = metrics.method_label(request.method), str(response.status_code)

    def done() -> None:
        metrics.apply_deferred()
        metrics.IN_PROGRESS.dec()
        metrics.REQUESTS.labels(endpoint, method, status).inc()
        metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    response.call_on_close(done)
    return response
