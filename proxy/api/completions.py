"""POST /v1/completions."""

from flask import Blueprint, Response

from proxy.api.http import answer, client_headers, parse_body, service
from proxy.openai_types import CompletionRequest

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
def completions() -> Response:
    """Text completion through the Stained Glass Transform."""
    return answer(service().complete(parse_body(CompletionRequest), client_headers()))
