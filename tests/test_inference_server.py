"""inference_server against real processes: a tiny model, real sockets, the real OpenAI SDK."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-123"
MODEL_NAME = "tiny-llama"
NULL_HIDDEN = 32
NULL_TOKENS = 5
PROMPT = "What is the capital of France?"
READY = re.compile(r"inference_server ready on (http://\S+)")


class Server:
    """A ``python -m inference_server`` subprocess, its URL and its log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inference_server", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout):
            self.stop()
            pytest.fail(f"server did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inference_server.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / MODEL_NAME)


@pytest.fixture(scope="session")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The model server (with an API key) and a null-mode server, started in parallel."""
    logs = tmp_path_factory.mktemp("logs")
    started = {
        "model": Server(["--model", str(model_dir), "--api-key", API_KEY], logs / "model.log"),
        "null": Server(["--null-tokens", str(NULL_TOKENS), "--hidden-size", str(NULL_HIDDEN)], logs / "null.log"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        codes = {name: server.stop() for name, server in started.items()}
    assert codes == {"model": 0, "null": 0}, f"unclean SIGTERM shutdown: {codes}"


@pytest.fixture(scope="session")
def server(servers: dict[str, Server]) -> Server:
    return servers["model"]


@pytest.fixture(scope="session")
def http(server: Server) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session


@pytest.fixture(scope="session")
def hf(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()


def b64_tensor(tensor: torch.Tensor) -> str:
    buf = io.BytesIO()
    torch.save(tensor.contiguous() if isinstance(tensor, torch.Tensor) else tensor, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def prompt_embeds(hf, text: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    tokenizer, model = hf
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model.get_input_embeddings()(ids)[0].to(dtype)


def complete(http: requests.Session, server: Server, **body) -> dict:
    response = http.post(f"{server.url}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def stream(http: requests.Session, server: Server, **body) -> list[dict]:
    """All SSE events (parsed), checking the framing and the final [DONE]."""
    body = {"model": MODEL_NAME, **body, "stream": True}
    with http.post(f"{server.url}/v1/completions", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = response.content.decode("utf-8")
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    return [json.loads(e[len("data: ") :]) for e in events[:-2]]


# --- /v1/models, health, auth -------------------------------------------------------------


def test_models_and_health(http: requests.Session, server: Server) -> None:
    body = http.get(f"{server.url}/v1/models", timeout=10).json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == model["root"] == MODEL_NAME
    assert model["object"] == "model" and model["owned_by"] == "inference_server"
    assert model["max_model_len"] == 512 and isinstance(model["created"], int)
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200  # no key needed


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_api_key_required(server: Server, headers: dict[str, str]) -> None:
    for method, path in [("get", "/v1/models"), ("post", "/v1/completions")]:
        response = requests.request(method, server.url + path, headers=headers, json={"prompt": "x"}, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 401


# --- completions ------------------------------------------------------------------------


def test_plain_prompt(http: requests.Session, server: Server) -> None:
    body = complete(http, server, prompt=PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", body["id"])
    assert body["object"] == "text_completion" and body["model"] == MODEL_NAME
    [choice] = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None and choice["stop_reason"] is None
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prompt_embeds_give_same_greedy_text(http: requests.Session, server: Server, hf, dtype) -> None:
    plain = complete(http, server, prompt=PROMPT, max_tokens=20, temperature=0)
    embeds = prompt_embeds(hf, PROMPT, dtype)
    body = complete(http, server, prompt_embeds=b64_tensor(embeds), max_tokens=20, temperature=0)
    assert body["choices"][0]["text"] == plain["choices"][0]["text"]
    assert body["usage"] == plain["usage"]
    # a [1, seq, hidden] tensor is squeezed, as vLLM does
    batched = complete(http, server, prompt_embeds=b64_tensor(embeds[None]), max_tokens=20, temperature=0)
    assert batched["choices"][0]["text"] == plain["choices"][0]["text"]


def test_list_of_prompt_embeds(http: requests.Session, server: Server, hf) -> None:
    prompts = [PROMPT, "Why is the sky blue?"]
    singles = [complete(http, server, prompt=p, max_tokens=10, temperature=0)["choices"][0]["text"] for p in prompts]
    body = complete(
        http, server, prompt_embeds=[b64_tensor(prompt_embeds(hf, p)) for p in prompts], max_tokens=10, temperature=0
    )
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == singles
    assert body["usage"]["prompt_tokens"] == sum(prompt_embeds(hf, p).shape[0] for p in prompts)


def test_stream_concatenates_to_whole_text(http: requests.Session, server: Server) -> None:
    args = {"prompt": PROMPT, "max_tokens": 30, "temperature": 1.0, "seed": 7, "logprobs": 1}
    whole = complete(http, server, **args)
    events = stream(http, server, **args, stream_options={"include_usage": True})
    chunks, usage_chunk = events[:-1], events[-1]
    assert len({e["id"] for e in events}) == 1 and events[0]["id"].startswith("cmpl-")
    assert all(e["object"] == "text_completion" and e["model"] == MODEL_NAME for e in events)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    streamed_tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    assert streamed_tokens == whole["choices"][0]["logprobs"]["tokens"]
    lp = whole["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert len(lp["tokens"]) == whole["usage"]["completion_tokens"]
    assert all(1 <= len(top) <= 2 and all(v <= 0 for v in top.values()) for top in lp["top_logprobs"])


def test_n_choices(http: requests.Session, server: Server) -> None:
    body = complete(http, server, prompt=PROMPT, n=2, max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["text"] != body["choices"][1]["text"]
    assert body["usage"]["completion_tokens"] == 24
    events = stream(http, server, prompt=PROMPT, n=2, max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)
    for i in range(2):
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i)
        assert text == body["choices"][i]["text"]


def test_seed_reproducible(http: requests.Session, server: Server) -> None:
    args = {"prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "top_p": 0.95}
    first = complete(http, server, **args, seed=123)["choices"][0]["text"]
    assert complete(http, server, **args, seed=123)["choices"][0]["text"] == first
    others = {complete(http, server, **args, seed=s)["choices"][0]["text"] for s in (1, 2, 3)}
    assert others - {first}


def test_stop_string(http: requests.Session, server: Server) -> None:
    args = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = complete(http, server, **args)["choices"][0]["text"]
    stop = next(full[i : i + 3] for i in range(4, len(full) - 3) if full[i : i + 3].strip())
    expected = full[: full.find(stop)]
    [choice] = complete(http, server, **args, stop=[stop, "never-appears"])["choices"]
    assert choice["text"] == expected and choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    events = stream(http, server, **args, stop=stop)
    assert "".join(e["choices"][0]["text"] for e in events) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_penalties_accepted(http: requests.Session, server: Server) -> None:
    plain = complete(http, server, prompt=PROMPT, max_tokens=20, temperature=0)["choices"][0]["text"]
    penalised = complete(
        http, server, prompt=PROMPT, max_tokens=20, temperature=0, presence_penalty=2.0, frequency_penalty=2.0
    )["choices"][0]["text"]
    assert penalised != plain  # a greedy random model repeats itself; the penalties change that


def test_concurrent_streams(http: requests.Session, server: Server) -> None:
    results: list[str] = []

    def worker(seed: int) -> None:
        events = stream(http, server, prompt=PROMPT, max_tokens=15, seed=seed, ignore_eos=True)
        results.append("".join(e["choices"][0]["text"] for e in events))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3


def test_client_disconnect_stops_generation(server: Server) -> None:
    body = json.dumps(
        {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 480, "ignore_eos": True, "stream": True, "temperature": 0}
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nX-Request-ID: disconnect-test\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
    # the socket is closed mid-stream: the server must notice and stop generating
    pattern = re.compile(r"request_id=disconnect-test status=499 .*completion_tokens=(\d+)")
    deadline = time.monotonic() + 15
    while not (match := pattern.search(server.log_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert match, "no 499 log line for the dropped stream"
    assert int(match.group(1)) < 480


def test_logs_carry_no_text(http: requests.Session, server: Server) -> None:
    complete(http, server, prompt="a very private sentence", max_tokens=2)
    log = server.log_text()
    assert "status=200" in log and "private sentence" not in log and PROMPT not in log


# --- errors -------------------------------------------------------------------------------


def _bad_embeds(hf) -> dict[str, dict]:
    good = prompt_embeds(hf, PROMPT)
    return {
        "bad base64": {"prompt_embeds": "!!!not base64!!!"},
        "not a torch file": {"prompt_embeds": base64.b64encode(b"hello").decode()},
        "3-D batch 2": {"prompt_embeds": b64_tensor(torch.stack([good, good]))},
        "1-D": {"prompt_embeds": b64_tensor(good[0])},
        "wrong hidden size": {"prompt_embeds": b64_tensor(good[:, :32])},
        "int64": {"prompt_embeds": b64_tensor(torch.ones(3, 64, dtype=torch.int64))},
        "float64": {"prompt_embeds": b64_tensor(good.double())},
        "not a tensor": {"prompt_embeds": b64_tensor({"x": good})},  # type: ignore[arg-type]
        "too long": {"prompt_embeds": b64_tensor(good), "max_tokens": 510},
        "prompt too long": {"prompt": "the " * 600},
        "neither prompt nor embeds": {"max_tokens": 3},
        "bad temperature": {"prompt": "x", "temperature": -1},
        "bad n": {"prompt": "x", "n": 0},
        "bad logprobs": {"prompt": "x", "logprobs": 99},
        "stream_options without stream": {"prompt": "x", "stream_options": {"include_usage": True}},
    }


def test_errors(http: requests.Session, server: Server, hf) -> None:
    for name, body in _bad_embeds(hf).items():
        response = http.post(f"{server.url}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=30)
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, name
        assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"], name
    response = http.post(f"{server.url}/v1/completions", json={"model": "other", "prompt": "x"}, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == 404
    response = http.post(
        f"{server.url}/v1/completions", data="{not json", timeout=10, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()


# --- the real OpenAI SDK ------------------------------------------------------------------


def test_openai_sdk(server: Server, hf) -> None:
    from openai import AuthenticationError, OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.choices[0].text and whole.usage.completion_tokens <= 12
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    via_embeds = client.completions.create(
        model=MODEL_NAME,
        prompt="",
        max_tokens=12,
        temperature=0,
        extra_body={"prompt": None, "prompt_embeds": b64_tensor(prompt_embeds(hf, PROMPT))},
    )
    assert via_embeds.choices[0].text == whole.choices[0].text
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).models.list()


# --- null mode ----------------------------------------------------------------------------


def test_null_mode(servers: dict[str, Server]) -> None:
    url = servers["null"].url
    embeds = b64_tensor(torch.randn(7, NULL_HIDDEN, dtype=torch.bfloat16))
    assert requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == "null"
    body = requests.post(f"{url}/v1/completions", json={"prompt_embeds": embeds, "max_tokens": 100}, timeout=10).json()
    assert body["choices"][0]["text"] == " tok" * NULL_TOKENS and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": NULL_TOKENS, "total_tokens": 7 + NULL_TOKENS}
    capped = requests.post(
        f"{url}/v1/completions", json={"prompt_embeds": [embeds, embeds], "max_tokens": 2}, timeout=10
    ).json()
    assert [c["text"] for c in capped["choices"]] == [" tok tok"] * 2
    assert {c["finish_reason"] for c in capped["choices"]} == {"length"}
    response = requests.post(
        f"{url}/v1/completions",
        timeout=10,
        json={"prompt_embeds": embeds, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = [line[6:] for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert "".join(e["choices"][0]["text"] for e in parsed[:-1]) == " tok" * NULL_TOKENS
    assert parsed[-1]["usage"]["completion_tokens"] == NULL_TOKENS
    wrong = requests.post(f"{url}/v1/completions", json={"prompt_embeds": b64_tensor(torch.randn(3, 64))}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "BadRequestError"


def test_cli_errors_without_model() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference_server"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2 and "--model" in result.stderr
