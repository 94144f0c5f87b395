"""POST /v1/chat/completions."""

from flask import Blueprint, Response, request

from proxy.api.http import answer, parse_body, service
from proxy.openai_types import ChatCompletionRequest

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Chat completion through the Stained Glass Transform."""
    return answer(service().chat(parse_body(ChatCompletionRequest), request.headers))
