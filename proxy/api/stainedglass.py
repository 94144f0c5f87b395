"""POST /v1/stainedglass: off (404, like any unknown path) unless ``SGP_ENABLE_STAINEDGLASS=True``."""

import json

from flask import Blueprint, Response, current_app, request

from proxy import limits
from proxy.api.http import parse_body, service
from proxy.errors import NotFoundError
from proxy.openai_types import StainedGlassRequest
from proxy.serving.stainedglass import stainedglass

bp = Blueprint("stainedglass", __name__)


@bp.post("/v1/stainedglass")
def stained_glass() -> Response:
    """What the SGT does to a prompt (tokens, embeddings, reconstruction); nothing goes upstream.

    A debugging aid: it hands out (chosen text, transformed embedding) pairs, what an
    inversion attack trains on, so it is off unless the operator turns it on.
    """
    settings = current_app.extensions["sgp.settings"]
    if not settings.enable_stainedglass:
        raise NotFoundError(f"no such endpoint: {request.method} {request.path}")
    body_request = parse_body(StainedGlassRequest)
    context = service().sgt.max_model_len
    if body_request.messages is not None:  # bounded before anything is rendered, as the completion endpoints are
        limits.check_messages(body_request.messages, settings, context)
    else:
        limits.check_prompt_chars([body_request.prompt or ""], settings, context)
    body = stainedglass(service().sgt, body_request, settings.stainedglass_max_values)
    return Response(json.dumps(body), mimetype="application/json")
