"""A full run under the shipped logging configs logs no prompt, completion, key or password.

Each proxy runs under a real gunicorn with SGP_LOGGING_CONFIG_FILE, upstream
Basic-auth credentials and output decryption on (so the key ring refreshes
during the run); the client sends its own API key. Then the whole log
(gunicorn's and the proxy's lines) is searched for every secret.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from tests.procs import ROOT, Service

PASSWORD = "pw-Quokka-7731-never-logged"
USERNAME = "ops-user"
CLIENT_KEY = "sk-client-Narwhal-5521-never-logged"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| (?P<name>.{40}) \| (?P<level>.{8}) \| (?P<cid>.{32}) \| "
)


def full_run(url: str, tag: str) -> dict[str, list[str]]:
    """Chat and completions, whole and streamed, and errors; returns the prompts and completions used."""
    prompts = [f"{tag}-Marmalade-{i}-secret prompt" for i in range(8)]
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    completions: list[str] = []

    def post(path: str, body: dict, request_id: str | None = None) -> requests.Response:
        extra = {"X-Request-ID": request_id} if request_id else {}
        return requests.post(url + path, json=body, headers={**headers, **extra}, timeout=60)

    for i, stream in enumerate((False, True)):
        chat = post(
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": prompts[i]}], "max_tokens": 8, "stream": stream},
            request_id=f"{tag}-chat-{i}",
        )
        completion = post(
            "/v1/completions", {"model": "m", "prompt": prompts[2 + i], "max_tokens": 8, "stream": stream}
        )
        for response in (chat, completion):
            assert response.status_code == 200, response.text
            completions.append(answer_text(response))
    errors = [
        post("/v1/chat/completions", {"model": "m", "messages": [{"role": "wizard", "content": prompts[4]}]}),
        post("/v1/completions", {"model": "m", "prompt": prompts[5] * 400, "max_tokens": 8}),
        post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": prompts[6]}], "n": -1}),
        requests.post(url + "/v1/chat/completions", data=f'{{"messages": "{prompts[7]}', headers=headers, timeout=10),
        requests.get(url + "/v1/nothing-here", headers=headers, timeout=10),
    ]
    assert [e.status_code >= 400 for e in errors] == [True] * len(errors), [e.text for e in errors]
    for probe in ("/livez", "/readyz", "/livez"):
        assert requests.get(url + probe, timeout=10).status_code == 200
    return {"prompts": prompts, "completions": completions}


def answer_text(response: requests.Response) -> str:
    if not response.headers["Content-Type"].startswith("text/event-stream"):
        choice = response.json()["choices"][0]
        return choice.get("text") or choice["message"]["content"]
    pieces = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                pieces.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(pieces)


def assert_nothing_secret(log: str, used: dict[str, list[str]]) -> None:
    for prompt in used["prompts"]:
        assert prompt.split("-secret")[0] not in log, "prompt text in the log"
    for text in used["completions"]:
        if len(text.strip()) >= 6:
            assert text not in log, "completion text in the log"
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, CLIENT_KEY, basic, "Quokka", "Narwhal"):
        assert secret not in log, "a key or password in the log"


@pytest.fixture(scope="module")
def proxy_env(tiny_sgt: Path, protected_upstream: Service) -> Callable[[Path], dict[str, str]]:
    def env(config: Path) -> dict[str, str]:
        return {
            "SGP_SGT_PATH": str(tiny_sgt),
            "SGP_INFERENCE_SERVICE_HOST": protected_upstream.url,
            "SGP_LOGGING_CONFIG_FILE": str(config),
            "SGP_API_USERNAME": USERNAME,
            "SGP_API_PASSWORD": PASSWORD,
            "SGP_OUTPUT_DECRYPTION": "True",
            "SGP_EPHEMERAL_KEY_REFRESH_TIME_SECONDS": "0.5",
        }

    return env


def test_text_format_full_run(launch_proxy: Callable[..., Service], proxy_env) -> None:
    env = proxy_env(ROOT / "logging.yaml")
    proxy = launch_proxy(env.pop("SGP_INFERENCE_SERVICE_HOST"), **env)
    used = full_run(proxy.url, "text")
    log = proxy.log()
    assert_nothing_secret(log, used)

    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(TEXT_LINE.match(line) for line in lines), [x for x in lines if not TEXT_LINE.match(x)][:5]
    access = [line for line in lines if "| gunicorn.access " in line]
    assert any("| text-chat-0" in line and "POST /v1/chat/completions" in line for line in access)
    assert any("| text-chat-1" in line for line in access), "streamed request's access line lacks its id"
    assert not [line for line in access if '"GET /livez' in line or '"GET /readyz' in line], "probes not dropped"
    assert any('"GET /v1/nothing-here' in line and " 404 " in line for line in access)
    uncorrelated = [line for line in access if TEXT_LINE.match(line)["cid"].strip() == "-"]
    assert not uncorrelated, uncorrelated
    assert any("| gunicorn.error " in line and "Booting worker" in line for line in lines)


def test_json_format_at_debug_level(launch_proxy: Callable[..., Service], proxy_env, tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "logging-json.yaml").read_text(encoding="utf-8"))
    config["root"]["level"] = "DEBUG"  # stricter than shipped: not even debug lines may carry secrets
    path = tmp_path / "logging-debug.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = proxy_env(path)
    proxy = launch_proxy(env.pop("SGP_INFERENCE_SERVICE_HOST"), **env)
    used = full_run(proxy.url, "json")
    log = proxy.log()
    assert_nothing_secret(log, used)

    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "logger", "level", "correlation_id", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    chat = next(r for r in access if r["correlation_id"] == "json-chat-0")
    assert chat["http"]["method"] == "POST" and chat["http"]["path"] == "/v1/chat/completions"
    assert chat["http"]["status"] == 200 and isinstance(chat["http"]["duration_ms"], int)
    assert not [r for r in access if r["http"]["path"] in ("/livez", "/readyz")]
