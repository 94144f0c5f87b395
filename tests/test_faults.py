"""Faults with real processes: the upstream dies, stalls, fails; the client leaves; gunicorn is told to stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import error_shape
from tests.procs import Service, start_inference_server
from tests.relay import CannedUpstream

STREAM = {"model": "m", "messages": [{"role": "user", "content": "count slowly"}], "stream": True}


def _slow_upstream(workdir: Path, tokens: int, delay: float) -> Service:
    return start_inference_server(
        workdir,
        "--null-tokens",
        str(tokens),
        "--hidden-size",
        "64",
        "--token-delay",
        str(delay),
        "--served-model-name",
        "null",
    )


def _sse_lines(response: requests.Response) -> list[bytes]:
    return [line for line in response.iter_lines() if line]


def test_upstream_killed_mid_stream_ends_with_error_and_done(launch_proxy, workdir: Path) -> None:
    upstream = _slow_upstream(workdir, tokens=300, delay=0.02)
    proxy = launch_proxy(upstream.url, SGP_UPSTREAM_MODEL="null")
    lines: list[bytes] = []
    with requests.post(
        proxy.url + "/v1/chat/completions", json={**STREAM, "max_tokens": 300}, stream=True, timeout=20
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == 3:
                upstream.proc.kill()  # SIGKILL: no goodbye
        upstream.stop()
    assert lines[-1] == b"data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "upstream_unavailable" and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 503])
def test_upstream_statuses_pass_through(launch_proxy, status: int, canned: tuple[CannedUpstream, Service]) -> None:
    upstream, proxy = canned
    upstream.status = status
    upstream.message = f"upstream says {status}"
    for stream in (False, True):
        r = requests.post(
            proxy.url + "/v1/chat/completions", timeout=20, json={**STREAM, "stream": stream, "max_tokens": 2}
        )
        error = error_shape(r, status)
        assert f"upstream says {status}" in error["message"]


@pytest.fixture(scope="module")
def canned(launch_proxy) -> tuple[CannedUpstream, Service]:
    upstream = CannedUpstream()
    yield upstream, launch_proxy(upstream.url, SGP_UPSTREAM_MODEL="m")
    upstream.close()


def test_client_disconnect_closes_the_upstream_request_within_a_second(launch_proxy, workdir: Path) -> None:
    upstream = _slow_upstream(workdir, tokens=400, delay=0.02)
    try:
        proxy = launch_proxy(upstream.url, SGP_UPSTREAM_MODEL="null")
        body = json.dumps({**STREAM, "max_tokens": 400}).encode()
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(4096)
        sock.close()
        left = time.monotonic()
        while "status=499" not in upstream.log() and time.monotonic() - left < 1.0:
            time.sleep(0.02)
        assert "status=499" in upstream.log(), "the upstream request was still running 1 s after the client left"
    finally:
        upstream.stop()


def test_sigterm_lets_in_flight_streams_finish(launch_proxy, workdir: Path) -> None:
    upstream = _slow_upstream(workdir, tokens=60, delay=0.03)  # about 2 s of streaming
    try:
        proxy = launch_proxy(upstream.url, SGP_UPSTREAM_MODEL="null")
        lines: list[bytes] = []

        def stream() -> None:
            with requests.post(
                proxy.url + "/v1/completions",
                stream=True,
                timeout=30,
                json={"model": "m", "prompt": "x", "max_tokens": 60, "stream": True},
            ) as r:
                lines.extend(_sse_lines(r))

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(0.7)
        os.kill(proxy.proc.pid, signal.SIGTERM)  # the gunicorn master, as Kubernetes does
        reader.join(30)
        proxy.proc.wait(30)
        assert lines[-1] == b"data: [DONE]"
        text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
        assert text == " tok" * 60
        assert proxy.proc.returncode == 0
    finally:
        upstream.stop()


def test_bad_sgt_file_stops_gunicorn_with_a_clear_message(launch_proxy, tiny_sgt: Path, tmp_path: Path) -> None:
    import torch

    data = dict(torch.load(tiny_sgt, weights_only=True))
    data["version"] = 7
    wrong = tmp_path / "wrong_version.pt"
    torch.save(data, wrong)
    with pytest.raises(RuntimeError) as failed:
        launch_proxy("http://127.0.0.1:9", SGP_SGT_PATH=str(wrong))
    assert "wrong_version.pt" in str(failed.value) and "version 7" in str(failed.value)
