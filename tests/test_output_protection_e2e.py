"""Output protection end to end: real protected inference_server, real gunicorn, both proxy modes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

import sgop as op
from tests.helpers import TINY_NAME
from tests.procs import ROOT, Service
from tests.relay import RecordingRelay

QUESTION = "Tell me a short story about a lighthouse"
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def decrypting_proxy(launch_proxy, protected_upstream: Service, exact_sgt: Path) -> Service:
    """SGP_OUTPUT_DECRYPTION=True, keys refreshed every second, two workers."""
    return launch_proxy(
        protected_upstream.url,
        workers=2,
        SGP_SGT_PATH=str(exact_sgt),
        SGP_OUTPUT_DECRYPTION="True",
        SGP_EPHEMERAL_KEY_REFRESH_TIME_SECONDS="1",
    )


@pytest.fixture(scope="module")
def relaying_proxy(launch_proxy, protected_upstream: Service, exact_sgt: Path) -> Service:
    """SGP_OUTPUT_DECRYPTION=False in front of the protected server: the client decrypts."""
    return launch_proxy(protected_upstream.url, SGP_SGT_PATH=str(exact_sgt))


def _chat(seed: int, stream: bool = False) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": seed,
        "stream": stream,
    }


def _post_with_key(proxy: Service, body: dict, keypair: op.KeyPair) -> requests.Response:
    """A whole chat request that carries the client's own output-protection key."""
    return requests.post(
        proxy.url + "/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"x-client-public-key": keypair.public_header},
    )


def _text(base_url: str, seed: int, stream: bool) -> str:
    client = OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=60)
    body = _chat(seed)
    if not stream:
        return client.chat.completions.create(**body).choices[0].message.content
    return "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**{**body, "stream": True})
        if c.choices
    )


@pytest.fixture(scope="module")
def reference(exact_proxy: Service) -> dict[int, str]:
    """What the unprotected path answers for each seed."""
    return {seed: _text(exact_proxy.url, seed, stream=False) for seed in SEEDS}


@pytest.mark.parametrize("stream", [False, True])
def test_decrypting_proxy_answers_in_clear(decrypting_proxy: Service, reference: dict[int, str], stream: bool) -> None:
    for seed in SEEDS[:2]:
        assert _text(decrypting_proxy.url, seed, stream) == reference[seed]


def test_upstream_sees_only_ciphertext_and_the_proxy_key(
    decrypting_proxy: Service, protected_upstream: Service
) -> None:
    r = _post_with_key(decrypting_proxy, _chat(1), op.KeyPair.generate())
    assert r.status_code == 200
    assert "x-server-public-key" not in r.headers  # the proxy decrypted: nothing for the client to do
    assert not op.is_protected_piece(r.json()["choices"][0]["message"]["content"])


def test_key_refresh_under_sixteen_concurrent_streams(decrypting_proxy: Service, reference: dict[int, str]) -> None:
    failures: list[str] = []
    done: list[int] = []
    deadline = time.monotonic() + 5

    def worker(i: int) -> None:
        while time.monotonic() < deadline:
            seed = SEEDS[i % len(SEEDS)]
            try:
                text = _text(decrypting_proxy.url, seed, stream=True)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(repr(exc))
                continue
            if text != reference[seed]:
                failures.append(f"seed {seed}: {text!r} != {reference[seed]!r}")
            done.append(seed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert len(done) >= 16
    log = decrypting_proxy.log()
    assert "sgop1:" not in log and "sgop2:" not in log


def test_relaying_proxy_passes_ciphertext_and_server_key(relaying_proxy: Service, reference: dict[int, str]) -> None:
    keypair = op.KeyPair.generate()
    r = _post_with_key(relaying_proxy, _chat(1), keypair)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"].startswith("sgop1:")
    plain = op.decrypt_response(keypair, r.headers["x-server-public-key"], body)
    assert plain["choices"][0]["message"]["content"] == reference[1]
    with pytest.raises(op.DecryptionError):
        op.decrypt_response(op.KeyPair.generate(), r.headers["x-server-public-key"], body)


def test_relaying_proxy_stream_decrypts_with_the_helper(relaying_proxy: Service, reference: dict[int, str]) -> None:
    keypair = op.KeyPair.generate()
    with requests.post(
        relaying_proxy.url + "/v1/chat/completions",
        json=_chat(2, stream=True),
        stream=True,
        timeout=60,
        headers={"x-client-public-key": keypair.public_header},
    ) as r:
        server_key = r.headers["x-server-public-key"]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line and line != b"data: [DONE]"]
    assert any((c["choices"][0]["delta"].get("content") or "").startswith("sgop1:") for c in events if c["choices"])
    plain = op.decrypt_stream(keypair, server_key, events)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in plain if c["choices"]) == reference[2]


def test_example_client_runs(relaying_proxy: Service) -> None:
    result = subprocess.run(
        [sys.executable, "examples/output_protection_client.py", "--base-url", relaying_proxy.url + "/v1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sgop1:" not in result.stdout and "sgop2:" not in result.stdout


def test_unprotected_upstream_is_a_500_that_says_so(launch_proxy, upstream: Service) -> None:
    proxy = launch_proxy(upstream.url, SGP_OUTPUT_DECRYPTION="True")
    for stream in (False, True):
        r = requests.post(proxy.url + "/v1/chat/completions", json=_chat(1, stream), timeout=60)
        assert r.status_code == 500
        error = r.json()["error"]
        assert "not protected" in error["message"] and "SGP_OUTPUT_DECRYPTION" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def _flip_piece(data: bytes) -> bytes:
    """Change one base64 character inside the first protected piece of a block (same length)."""
    match = re.search(rb"sgop[12]:[A-Za-z0-9+/]{20}", data)
    if not match:
        return data
    at = match.start() + 16
    swapped = b"B" if data[at : at + 1] != b"B" else b"C"
    return data[:at] + swapped + data[at + 1 :]


def test_tampered_piece_is_500_or_stream_error(launch_proxy, protected_upstream: Service, exact_sgt: Path) -> None:
    tamper = RecordingRelay(protected_upstream.port, rewrite=_flip_piece)
    try:
        proxy = launch_proxy(
            tamper.url, SGP_SGT_PATH=str(exact_sgt), SGP_OUTPUT_DECRYPTION="True", SGP_UPSTREAM_MODEL=TINY_NAME
        )
        whole = requests.post(proxy.url + "/v1/chat/completions", json=_chat(1), timeout=60)
        assert whole.status_code == 500 and "decrypt" in whole.json()["error"]["message"]
        with requests.post(
            proxy.url + "/v1/chat/completions", json=_chat(1, stream=True), stream=True, timeout=60
        ) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == b"data: [DONE]"
        assert b'"error"' in lines[-2] and b"decrypt" in lines[-2]
    finally:
        tamper.close()


def test_no_key_material_in_logs(
    decrypting_proxy: Service, relaying_proxy: Service, protected_upstream: Service
) -> None:
    keypair = op.KeyPair.generate()
    r = _post_with_key(relaying_proxy, _chat(3), keypair)
    server_key = r.headers["x-server-public-key"]
    for service in (decrypting_proxy, relaying_proxy, protected_upstream):
        log = service.log()
        assert keypair.public_header not in log and server_key not in log
        assert "sgop1:" not in log and "sgop2:" not in log
        assert "PRIVATE" not in log.upper().replace("PRIVATE_", "")
