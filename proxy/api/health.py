"""Probes: /livez (the process answers) and /readyz (SGT loaded, upstream answering)."""

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from proxy.api.http import service

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    if service().ready():
        return jsonify(status="ready")
    return jsonify(status="not ready", reason="the inference service does not answer"), 503
