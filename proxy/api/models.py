"""GET /v1/models: the upstream's list."""

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from proxy.api.http import client_headers, service

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models() -> ResponseReturnValue:
    """The models the inference service serves."""
    return jsonify(service().models(client_headers()))
