"""POST /v1/stainedglass."""

import json

from flask import Blueprint, Response

from proxy.api.http import parse_body, service
from proxy.openai_types import StainedGlassRequest
from proxy.stainedglass import stainedglass

bp = Blueprint("stainedglass", __name__)


@bp.post("/v1/stainedglass")
def stained_glass() -> Response:
    """What the SGT does to a prompt (tokens, embeddings, reconstruction); nothing goes upstream."""
    body = stainedglass(service().sgt, parse_body(StainedGlassRequest))
    return Response(json.dumps(body), mimetype="application/json")
