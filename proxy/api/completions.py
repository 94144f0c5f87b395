"""POST /v1/completions."""

from flask import Blueprint, Response

from proxy import tracing
from proxy.api.http import answer, client_headers, parse_body, record, service
from proxy.openai_types import CompletionRequest

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
@tracing.traced("/v1/completions")
def completions() -> Response:
    """Text completion through the Stained Glass Transform."""
    with tracing.span("sgp.parse"):
        body = parse_body(CompletionRequest)
    return answer(service().complete(body, client_headers(), record()))
