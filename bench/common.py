"""What every benchmark shares: assets built once into the output folder, services, statistics, tables.

Why one module: the overhead, throughput and memory benchmarks must talk to the
same kinds of upstreams and SGTs, built the same way, so their numbers compare.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import torch

from tests.procs import Service, start_inference_server, start_proxy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY_NAME = "tiny-llama"
SHORT_WORDS = 7  # about 30 tokens once the chat template is around it
LONG_TOKENS = 2048
LONG_HIDDEN = 4096
LONG_VOCAB = 32000
BIG_VOCAB = 128256  # an 8B-class table: 128256 x 4096 bf16 = 1.05 GB
MAX_MODEL_LEN = 8192


@dataclass
class Options:
    """Command-line options every benchmark receives."""

    out: Path
    quick: bool
    device: str = "cpu"
    pairs: int | None = None


# ---------------------------------------------------------------- statistics and tables
def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between ranks; nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean of a sample (milliseconds in, milliseconds out)."""
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text (and Markdown) table, printed and returned."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    lines = [f"\n### {title}", "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_json(out: Path, name: str, data: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``repeat`` calls after ``warmup`` ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# ---------------------------------------------------------------- assets (built once, kept in --out)
def tiny_model(out: Path) -> Path:
    from inference_server.tiny_model import build_tiny_model

    path = out / "assets" / TINY_NAME
    if not (path / "config.json").is_file():
        build_tiny_model(path)
    return path


def tiny_sgt(out: Path, noise_scale: float = 0.0) -> Path:
    """The tiny model's SGT; noise 0 keeps the tiny model's answers equal to the direct ones (same work)."""
    from sgt_tools.build import build_sgt

    path = out / "assets" / f"sgt-tiny-{noise_scale}.pt"
    if not path.is_file():
        build_sgt(tiny_model(out), path, width=32, noise_scale=noise_scale)
    return path


def synthetic_sgt(out: Path, vocab: int, hidden: int = LONG_HIDDEN, width: int = 512) -> Path:
    """An SGT with the tiny tokenizer and a random bf16 table of ``vocab x hidden``.

    Why synthetic: no 8B checkpoint is available offline, and the proxy's cost
    depends only on the table's shape and dtype, not on its values.
    """
    from transformers import AutoTokenizer

    from proxy.sgt.file import save_sgt_file
    from proxy.sgt.transform import EstimatorConfig, StainedGlassTransform

    path = out / "assets" / f"sgt-synthetic-{vocab}x{hidden}.pt"
    if path.is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model(out))
    gen = torch.Generator().manual_seed(0)
    table = torch.empty(vocab, hidden, dtype=torch.bfloat16)
    for start in range(0, vocab, 8192):  # in slices: no float32 copy of a 1 GB table
        block = table[start : start + 8192]
        block.copy_(torch.randn(block.shape, generator=gen) * 0.02)
    config = EstimatorConfig(hidden_size=hidden, width=width, noise_scale=0.3)
    transform = StainedGlassTransform(config, table_std=torch.full((hidden,), 0.02))
    content = {
        "model": {
            "name": f"synthetic-{hidden}",
            "hidden_size": hidden,
            "vocab_size": vocab,
            "max_model_len": MAX_MODEL_LEN,
            "dtype": "bfloat16",
        },
        "tokenizer": {
            "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
            "chat_template": tokenizer.chat_template,
            "special_tokens": {
                k: str(getattr(tokenizer, k)) for k in ("bos_token", "eos_token") if getattr(tokenizer, k)
            },
        },
        "estimator": config.to_dict(),
        "embedding": table,
        "state_dict": transform.state_dict(),
        "training": {"trained": False, "synthetic": True},
    }
    return save_sgt_file(path, content)


def short_messages() -> list[dict[str, str]]:
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch from an old oak tree".split()
    return [{"role": "user", "content": " ".join(words[:SHORT_WORDS])}]


def long_messages(sgt_path: Path, tokens: int = LONG_TOKENS) -> list[dict[str, str]]:
    """A chat whose rendered prompt is exactly ``tokens`` long (or one short of it) with this SGT's tokenizer."""
    from proxy.sgt.file import load_sgt_file
    from proxy.sgt.prompt import PromptRenderer

    tok = load_sgt_file(sgt_path)["tokenizer"]
    renderer = PromptRenderer(tok["tokenizer_json"], tok["chat_template"], tok.get("special_tokens", {}))
    words = short_messages()[0]["content"].split()

    def render(n: int) -> int:
        return len(
            renderer.render_chat([{"role": "user", "content": " ".join(words[i % len(words)] for i in range(n))}])
        )

    lo, hi = 1, tokens
    while render(hi) < tokens:
        hi *= 2
    while lo < hi:  # the most words that still fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if render(mid) <= tokens else (lo, mid - 1)
    return [{"role": "user", "content": " ".join(words[i % len(words)] for i in range(lo))}]


# ---------------------------------------------------------------- services
def null_upstream(out: Path, hidden: int, tokens: int, dtype: str = "bfloat16") -> Service:
    """inference_server in null mode: decodes and checks prompt_embeds as vLLM does, streams N fixed tokens."""
    return start_inference_server(
        _logs(out),
        "--null-tokens",
        str(tokens),
        "--hidden-size",
        str(hidden),
        "--dtype",
        dtype,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--log-level",
        "WARNING",
    )


def canned_upstream(out: Path, tokens: int = 256) -> Service:
    """``bench.canned``: prebuilt answers written in large batches, so the proxy (not the upstream) is measured."""
    argv = [sys.executable, "-m", "bench.canned", "--host", "127.0.0.1", "--port", "{port}", "--tokens", str(tokens)]
    return Service("canned", argv, _logs(out)).wait_http("/v1/models")


def model_upstream(out: Path) -> Service:
    return start_inference_server(
        _logs(out), "--model", str(tiny_model(out)), "--served-model-name", TINY_NAME, "--log-level", "WARNING"
    )


def proxy(out: Path, sgt: Path, upstream: Service, workers: int = 1, threads: int = 16, **env: str) -> Service:
    """The proxy under the project's gunicorn.conf.py, without an access log (its line costs ~0.25 ms a request)."""
    full = {
        "SGP_SGT_PATH": str(sgt),
        "SGP_INFERENCE_SERVICE_HOST": upstream.url,
        "SGP_MAX_NEW_TOKENS": "16",
        "GUNICORN_ACCESSLOG": "",
        **env,
    }
    return start_proxy(_logs(out), full, workers=workers, threads=threads)


@contextmanager
def running(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


def _logs(out: Path) -> Path:
    path = out / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- one HTTP call, timed
@dataclass
class Call:
    """One request's end-to-end time and time to its first text chunk (ms), and whether it failed."""

    total_ms: float
    ttft_ms: float
    chunks: int
    error: str | None = None


def call(session: requests.Session, url: str, body: dict[str, Any] | bytes, streamed: bool) -> Call:
    """POST and read the whole answer; a streamed answer's first chunk carrying text sets TTFT."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    t0 = time.perf_counter()
    try:
        resp = session.post(url, data=data, headers={"Content-Type": "application/json"}, stream=streamed, timeout=120)
        if resp.status_code != 200:
            return Call(0, 0, 0, f"HTTP {resp.status_code}: {resp.text[:200]}")
        if not streamed:
            resp.json()
            total = (time.perf_counter() - t0) * 1e3
            return Call(total, total, 0)
        ttft = None
        chunks = 0
        for line in resp.iter_lines(chunk_size=None):
            if not line.startswith(b"data:"):
                continue
            if line == b"data: [DONE]":
                break
            chunks += 1
            if ttft is None and _carries_text(line):
                ttft = (time.perf_counter() - t0) * 1e3
            if b'"error"' in line[:20]:
                return Call(0, 0, chunks, line.decode()[:200])
        resp.close()
        total = (time.perf_counter() - t0) * 1e3
        return Call(total, ttft if ttft is not None else total, chunks)
    except requests.RequestException as exc:
        return Call(0, 0, 0, f"{type(exc).__name__}: {exc}")


def _carries_text(line: bytes) -> bool:
    """A chunk with a non-empty completion text or chat content (not a role-only or empty chunk)."""
    return any(key in line and key + b'"' not in line for key in (b'"text": "', b'"content": "'))
