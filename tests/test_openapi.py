"""/openapi.json is a valid OpenAPI 3 document (openapi-spec-validator) that lists every route."""

from __future__ import annotations

import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from proxy.api.openapi import openapi_document

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/livez", "/readyz", "/metrics")


def test_served_document_is_valid_openapi_3(proxy) -> None:
    spec = requests.get(proxy.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    validate(spec)  # raises OpenAPIValidationError with the failing path
    assert set(ROUTES) <= set(spec["paths"])


def test_served_document_is_the_built_one(proxy) -> None:
    assert requests.get(proxy.url + "/openapi.json", timeout=10).json()["paths"].keys() == (
        openapi_document()["paths"].keys()
    )


def test_validator_catches_a_broken_document() -> None:
    broken = openapi_document()
    del broken["paths"]["/v1/completions"]["post"]["responses"]["200"]["description"]
    try:
        validate(broken)
    except OpenAPIValidationError:
        return
    raise AssertionError("a response without a description passed validation")
