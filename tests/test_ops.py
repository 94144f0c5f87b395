"""Operations settings against a real gunicorn: headers added upstream, /metrics on a port of its own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from proxy.settings import Settings, SettingsError, traces_exporter
from tests.helpers import start_tiny_upstream
from tests.procs import ROOT, Service, free_port, scrape_metrics
from tests.relay import RecordingRelay

SECRET = "upstream-key-7f3a9c"  # the value that must reach the upstream and never a log
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def keyed_upstream(tiny_model: Path, workdir: Path) -> Iterator[Service]:
    """inference_server that answers only requests with ``Authorization: Bearer SECRET``."""
    service = start_tiny_upstream(tiny_model, workdir, "--api-key", SECRET)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def keyed_relay(keyed_upstream: Service) -> Iterator[RecordingRelay]:
    recorder = RecordingRelay(keyed_upstream.port)
    yield recorder
    recorder.close()


# ---- SGP_REQUEST_HEADERS_TO_ADD ----
def upstream_requests(raw: bytes) -> list[dict[str, list[str]]]:
    """The header blocks of the HTTP requests in a relay capture: {lower-case name: [values]}."""
    blocks = []
    for match in re.finditer(rb"(?:GET|POST) /v1/\S+ HTTP/1\.1\r\n(.*?)\r\n\r\n", raw, re.DOTALL):
        headers: dict[str, list[str]] = {}
        for line in match.group(1).decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        blocks.append(headers)
    return blocks


def test_added_headers_reach_the_upstream_on_every_request_and_never_the_logs(
    launch_proxy: Callable[..., Service], keyed_relay: RecordingRelay
) -> None:
    """A hosted upstream that wants its own key: the proxy adds it, over the client's Authorization."""
    keyed_relay.clear()
    proxy = launch_proxy(
        keyed_relay.url,
        SGP_REQUEST_HEADERS_TO_ADD=f"Authorization=Bearer {SECRET}, X-Tenant=team-42",
        SGP_LOGGING_CONFIG_FILE="logging-json.yaml",
    )
    client_auth = {"Authorization": "Bearer client-key-not-for-upstream"}
    whole = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=client_auth, timeout=60)
    assert whole.status_code == 200, whole.text
    streamed = requests.post(
        proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=client_auth, timeout=60
    )
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert requests.get(proxy.url + "/v1/models", timeout=30).status_code == 200
    assert requests.get(proxy.url + "/readyz", timeout=30).status_code == 200

    sent = upstream_requests(keyed_relay.sent())
    assert len(sent) >= 4  # the model lookup, two chats, /v1/models, /readyz's check
    for headers in sent:
        assert headers["authorization"] == [f"Bearer {SECRET}"], "exactly one Authorization: the added one"
        assert headers["x-tenant"] == ["team-42"]
    assert b"client-key-not-for-upstream" not in keyed_relay.sent()
    assert SECRET not in proxy.log() and "team-42" not in proxy.log()


def test_without_the_added_key_the_keyed_upstream_refuses(
    launch_proxy: Callable[..., Service], keyed_relay: RecordingRelay
) -> None:
    """The control for the test above: the key really is what lets the requests through."""
    proxy = launch_proxy(keyed_relay.url, SGP_UPSTREAM_MODEL="tiny-llama")
    answer = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert answer.status_code == 401, answer.text


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("Host=evil.example", "Host"),
        ("Transfer-Encoding=chunked", "Transfer-Encoding"),
        ("Content-Length=0", "Content-Length"),
        ("Connection=close", "Connection"),
        ("X-Request-ID=fixed", "X-Request-ID"),
        ("Bad Name=secret-in-value", "entry 1"),
        ("X-Api-Key:secret-in-value", "entry 1"),
        ("X-A=1,x-a=2", "given twice"),
        ("X-A=line\r\nX-Injected: secret-in-value", "X-A"),
    ],
)
def test_bad_headers_to_add_stop_start_up_without_echoing_values(value: str, named: str) -> None:
    with pytest.raises(SettingsError) as failed:
        Settings.from_env({"SGP_REQUEST_HEADERS_TO_ADD": value})
    message = str(failed.value)
    assert message.startswith("SGP_REQUEST_HEADERS_TO_ADD") and named in message
    assert "secret-in-value" not in message


def test_authorization_is_added_or_basic_auth_not_both() -> None:
    env = {"SGP_REQUEST_HEADERS_TO_ADD": "Authorization=Bearer k", "SGP_API_USERNAME": "u", "SGP_API_PASSWORD": "p"}
    with pytest.raises(SettingsError, match=r"SGP_REQUEST_HEADERS_TO_ADD.*SGP_API_USERNAME"):
        Settings.from_env(env)
    settings = Settings.from_env({"SGP_REQUEST_HEADERS_TO_ADD": "X-Api-Key=a=b==, X-Other = two words"})
    assert settings.upstream_headers_to_add == {"X-Api-Key": "a=b==", "X-Other": "two words"}
    assert "a=b==" not in repr(settings) and "a=b==" not in str(settings.describe())


def test_a_bad_header_stops_a_real_start_up(launch_proxy: Callable[..., Service], upstream: Service) -> None:
    with pytest.raises(RuntimeError) as failed:
        launch_proxy(upstream.url, SGP_REQUEST_HEADERS_TO_ADD="Proxy-Authorization=Basic c2VjcmV0LXZhbHVl")
    assert "SGP_REQUEST_HEADERS_TO_ADD" in str(failed.value) and "c2VjcmV0LXZhbHVl" not in str(failed.value)


# ---- SGP_METRICS_PORT ----
def test_metrics_move_to_their_own_port(launch_proxy: Callable[..., Service], upstream: Service) -> None:
    """Two workers' samples summed on the metrics port; the API port's /metrics is a 404 OpenAI error."""
    metrics_port = free_port()
    proxy = launch_proxy(upstream.url, workers=2, SGP_METRICS_PORT=str(metrics_port))
    for _ in range(4):
        assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    on_api = requests.get(proxy.url + "/metrics", timeout=10)
    assert on_api.status_code == 404 and on_api.json()["error"]["code"] == "not_found"
    scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    line = r'^sgp_requests_total\{endpoint="/v1/chat/completions",method="POST",status="200"\} 4\.0$'
    text = scrape_metrics(f"http://127.0.0.1:{metrics_port}/metrics", lambda t: bool(re.search(line, t, re.M)))
    assert re.search(line, text, re.MULTILINE), text[:2000]
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in proxy.log()

    def listens(process: psutil.Process) -> bool:
        return any(c.laddr.port == metrics_port and c.status == "LISTEN" for c in process.net_connections("tcp"))

    master = psutil.Process(proxy.proc.pid)
    workers = master.children()
    assert len(workers) == 2 and listens(master) and not any(listens(w) for w in workers), "only the master serves"


def test_metrics_stay_on_the_api_port_by_default(launch_proxy: Callable[..., Service], upstream: Service) -> None:
    proxy = launch_proxy(upstream.url)
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    wanted = 'sgp_requests_total{endpoint="/v1/chat/completions"'
    assert wanted in scrape_metrics(proxy.url + "/metrics", lambda text: wanted in text)


def test_a_taken_metrics_port_stops_start_up(launch_proxy: Callable[..., Service], upstream: Service) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError) as failed:
            launch_proxy(upstream.url, SGP_METRICS_PORT=str(taken.getsockname()[1]))
    assert "SGP_METRICS_PORT" in str(failed.value)


# ---- OTEL_* ----
@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_tracing_is_off_unless_otel_variables_ask(env: dict[str, str], exporter: str | None) -> None:
    assert traces_exporter(env) == exporter


def test_an_unknown_traces_exporter_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        traces_exporter({"OTEL_TRACES_EXPORTER": "jaeger"})


# ---- the lock file ----
def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {name: (version, [hashes])}."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = match.group(1).lower().replace("_", "-")
            entries[name] = (match.group(2), [])
        elif match := re.search(r"--hash=sha256:([0-9a-f]{64})", line):
            entries[name][1].append(match.group(1))
    return entries


def test_the_lock_pins_every_requirement_at_its_version_with_hashes() -> None:
    """A pin added to requirements.txt without `make lock` fails here (and in the image's --require-hashes)."""
    locked = lock_entries()
    assert all(hashes for _, hashes in locked.values()), "every locked file has a sha256"
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        name = name.lower().replace("_", "-")
        assert name in locked, f"{name} is in requirements.txt but not in requirements.lock: run make lock"
        assert locked[name][0].split("+")[0] == version, f"{name}: requirements.txt {version}, lock {locked[name][0]}"
    assert locked["torch"][0] == "2.13.0+cpu"
    # the offline SGT tools' packages stay out of the runtime lock (and so out of the image)
    assert not {"gguf", "accelerate", "matplotlib"} & locked.keys()
    for installer in ("Dockerfile", "Makefile"):
        text = (ROOT / installer).read_text(encoding="utf-8")
        assert "--require-hashes" in text and "requirements.lock" in text
