"""POST /v1/stainedglass."""

import json

from flask import Blueprint, Response, current_app

from proxy import limits
from proxy.api.http import parse_body, service
from proxy.openai_types import StainedGlassRequest
from proxy.stainedglass import stainedglass

bp = Blueprint("stainedglass", __name__)


@bp.post("/v1/stainedglass")
def stained_glass() -> Response:
    """What the SGT does to a prompt (tokens, embeddings, reconstruction); nothing goes upstream."""
    request = parse_body(StainedGlassRequest)
    settings, context = current_app.extensions["sgp.settings"], service().sgt.max_model_len
    if request.messages is not None:  # bounded before anything is rendered, as the completion endpoints are
        limits.check_messages(request.messages, settings, context)
    else:
        limits.check_prompt_chars([request.prompt or ""], settings, context)
    body = stainedglass(service().sgt, request)
    return Response(json.dumps(body), mimetype="application/json")
