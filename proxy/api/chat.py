"""POST /v1/chat/completions."""

from flask import Blueprint, Response

from proxy.api.http import answer, client_headers, parse_body, service
from proxy.openai_types import ChatCompletionRequest

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Chat completion through the Stained Glass Transform."""
    return answer(service().chat(parse_body(ChatCompletionRequest), client_headers()))
