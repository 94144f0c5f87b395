"""The upstream's model name, asked once from /v1/models: an upstream that serves none is a 502."""

from __future__ import annotations

import requests

from tests.helpers import error_shape
from tests.relay import CannedUpstream


def test_an_upstream_serving_no_model_is_a_502(launch_proxy) -> None:
    upstream = CannedUpstream(status=200, message="no data here")  # answers 200 with a body that lists no model
    try:
        proxy = launch_proxy(upstream.url)  # no SGP_UPSTREAM_MODEL: the proxy asks the upstream
        r = requests.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=20,
        )
        error = error_shape(r, 502)
        assert error["code"] == "no_upstream_model" and "serves no model" in error["message"]
    finally:
        upstream.close()
