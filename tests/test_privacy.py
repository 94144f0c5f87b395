"""The prompt text never reaches the upstream: not on success, not on any error path."""

from __future__ import annotations

import requests

from tests.relay import RecordingRelay
from tests.test_proxy_core import _decode, _requests_sent

MARKER = "Ultraviolet-Pangolin-4471"


def test_no_prompt_text_upstream_on_any_path(proxy, relay: RecordingRelay) -> None:
    relay.clear()
    chat = proxy.url + "/v1/chat/completions"
    text = f"my account {MARKER} is overdrawn"
    attempts = [
        (chat, {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 2}),
        (chat, {"model": "m", "messages": [{"role": "system", "content": text}, {"role": "user", "content": "hi"}],
                "max_tokens": 2, "stream": True}),
        (chat, {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
                "max_tokens": 2, "n": 2}),
        (proxy.url + "/v1/completions", {"model": "m", "prompt": [text, text + " again"], "max_tokens": 2}),
        # errors: bad field, too long, unknown role, image part: none may leak either
        (chat, {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 9}),
        (chat, {"model": "m", "messages": [{"role": "user", "content": (text + " ") * 400}]}),
        (chat, {"model": "m", "messages": [{"role": "wizard", "content": text}]}),
        (chat, {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": f"http://x/{MARKER}.png"}}]}]}),
    ]
    statuses = [requests.post(url, json=body, timeout=60).status_code for url, body in attempts]
    assert statuses == [200, 200, 200, 200, 400, 400, 400, 400]
    sent = relay.sent()
    assert MARKER.encode() not in sent and b"overdrawn" not in sent
    bodies = _requests_sent(relay)
    assert len(bodies) == 4  # only the four good requests went upstream at all
    for body in bodies:
        assert set(body) & {"prompt", "messages", "suffix"} == set()
        embeds = body["prompt_embeds"] if isinstance(body["prompt_embeds"], list) else [body["prompt_embeds"]]
        assert all(_decode(e).dim() == 2 for e in embeds)
    error = requests.post(chat, json=attempts[6][1], timeout=10).json()["error"]
    assert MARKER not in error["message"]  # error messages do not echo the content back either
