"""POST /v1/chat/completions."""

from flask import Blueprint, Response

from proxy import tracing
from proxy.api.http import answer, client_headers, parse_body, record, service
from proxy.openai_types import ChatCompletionRequest

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
@tracing.traced("/v1/chat/completions")
def chat_completions() -> Response:
    """Chat completion through the Stained Glass Transform."""
    with tracing.span("sgp.parse"):
        body = parse_body(ChatCompletionRequest)
    return answer(service().chat(body, client_headers(), record()))
