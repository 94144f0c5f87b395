"""The OpenAPI 3 document, built from the pydantic models, served by flasgger.

Flasgger serves ``/openapi.json`` and the Swagger UI at ``/docs`` (its assets
come from the flasgger package, not a CDN). The paths are written here from
the request and response models, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from flasgger import Swagger
from flask import Flask
from pydantic.json_schema import models_json_schema

from proxy.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelList,
    StainedGlassRequest,
    StainedGlassResponse,
)

MODELS = (
    ChatCompletionRequest,
    CompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    ErrorResponse,
    StainedGlassRequest,
    StainedGlassResponse,
)
ERROR_STATUSES = {
    "400": "Bad request",
    "401": "No or wrong client API key (when SGP_CLIENT_API_KEYS is set), or the inference service refused",
    "413": "Request too large",
    "415": "The request body is not JSON",
    "500": "Internal or output-protection error",
    "502": "Inference service unreachable",
    "504": "Inference service timed out",
}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _errors() -> dict[str, Any]:
    return {
        status: {"description": text, "content": {"application/json": {"schema": _ref(ErrorResponse)}}}
        for status, text in ERROR_STATUSES.items()
    }


def _generate(summary: str, request: type, whole: type, chunk: type) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {
                "200": {
                    "description": "The answer; with `stream: true` an event stream of chunks, then `data: [DONE]`",
                    "content": {
                        "application/json": {"schema": _ref(whole)},
                        "text/event-stream": {"schema": _ref(chunk)},
                    },
                },
                **_errors(),
            },
        }
    }


def _probe(summary: str) -> dict[str, Any]:
    return {
        "get": {"summary": summary, "responses": {"200": {"description": "OK"}, "503": {"description": "Not ready"}}}
    }


def _openapi30(schema: Any) -> Any:
    """Pydantic's JSON Schema (2020-12) in the OpenAPI 3.0 dialect the bundled Swagger UI renders.

    ``anyOf [X, null]`` becomes ``nullable``, ``const`` an one-value ``enum``,
    numeric ``exclusiveMinimum``/``exclusiveMaximum`` the 3.0 boolean form.
    """
    if isinstance(schema, list):
        return [_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _openapi30(value) for key, value in schema.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del out[key]
            out["nullable"] = True
            if len(rest) == 1 and "$ref" in rest[0]:
                out["allOf"] = rest
            elif len(rest) == 1:
                out.update({k: v for k, v in rest[0].items() if k not in out or k == "nullable"})
            else:
                out[key] = rest
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[plain] = out[bound]
            out[bound] = True
    if isinstance(out.get("examples"), list) and out["examples"]:
        out["example"] = out.pop("examples")[0]
    return out


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3 document."""
    _, defs = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Stained Glass Transform Proxy",
            "version": "1.0.0",
            "description": "OpenAI-compatible proxy that sends only obfuscated prompt embeddings upstream.",
        },
        "paths": {
            "/v1/chat/completions": _generate(
                "Chat completion through the SGT", ChatCompletionRequest, ChatCompletion, ChatCompletionChunk
            ),
            "/v1/completions": _generate("Text completion through the SGT", CompletionRequest, Completion, Completion),
            "/v1/models": {
                "get": {
                    "summary": "The inference service's models",
                    "responses": {
                        "200": {"description": "Models", "content": {"application/json": {"schema": _ref(ModelList)}}},
                        **_errors(),
                    },
                }
            },
            "/v1/stainedglass": {
                "post": {
                    "summary": "What the SGT does to a prompt: tokens, embeddings, nearest-neighbour reconstruction "
                    "and obfuscation score (nothing is sent to the inference service). A debugging aid that "
                    "reveals the transform: 404 unless SGP_ENABLE_STAINEDGLASS=True",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(StainedGlassRequest)}},
                    },
                    "responses": {
                        "200": {
                            "description": "The transform's view of the prompt",
                            "content": {"application/json": {"schema": _ref(StainedGlassResponse)}},
                        },
                        **{k: v for k, v in _errors().items() if k in ("400", "413", "500")},
                    },
                }
            },
            "/livez": _probe("The process answers"),
            "/readyz": _probe("The SGT is loaded and the inference service answers"),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, summed over all gunicorn workers",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": _openapi30(defs.get("$defs", {})),
            # required on /v1/* and /metrics only when the operator sets client keys
            "securitySchemes": {"clientKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"clientKey": []}],
    }


def install(app: Flask) -> Swagger:
    """Serve /openapi.json and the Swagger UI at /docs."""
    config = {
        "headers": [],
        "openapi": "3.0.3",
        "specs": [
            {
                "endpoint": "openapi",
                "route": "/openapi.json",
                "rule_filter": lambda rule: False,
                "model_filter": lambda tag: False,
            }
        ],
        "static_url_path": "/flasgger_static",
        "swagger_ui": True,
        "specs_route": "/docs",
    }
    return Swagger(app, config=config, template=openapi_document(), merge=False)
