"""Encode and send one long ``prompt_embeds`` body: the naive path, each lever, and the physical floor.

Why: for 2048 x 4096 bf16 (16.8 MB raw, 22.4 MB of base64) moving the bytes,
not computing them, is what costs. Every variant POSTs to a sink process that
reads the body and answers ``{}``, over loopback, through a pooled
``requests.Session`` (as the proxy does). The floor is a memcpy of the raw
bytes into memory already mapped plus a ``sendall`` of the base64's size.
Needs only torch, numpy, requests and pybase64 (runs on the GPU machine too).
"""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import socket
import time
from collections.abc import Callable
from typing import Any

import pybase64
import requests
import torch
from torch.utils.serialization import config as serialization_config

from bench import common
from bench.common import Options
from proxy.upstream import EmbedsBody, PromptEmbeds


def _sink(listener: socket.socket) -> None:
    """A minimal HTTP/1.1 server: read each request's body into one reused buffer, answer {}."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    while True:
        conn, _ = listener.accept()
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        break
                    pending += data
                if b"\r\n\r\n" not in pending:
                    break
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                got = len(pending)
                pending = b""
                while got < length:
                    n = conn.recv_into(view[: min(len(buf), length - got)])
                    if not n:
                        break
                    got += n
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def _naive(tensor: torch.Tensor, b64: Callable[[bytes], bytes]) -> bytes:
    """torch.save with CRC32, one base64 string, json.dumps, encoded (the old path)."""
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    text = b64(buffer.getbuffer()).decode("ascii")
    return json.dumps({"model": "m", "prompt_embeds": text, "max_tokens": 16}).encode()


def _no_crc_join(tensor: torch.Tensor) -> bytes:
    """torch.save without CRC32 into BytesIO, pybase64, body spliced as bytes (one join)."""
    serialization_config.save.compute_crc32 = False
    try:
        buffer = io.BytesIO()
        torch.save(tensor, buffer)
    finally:
        serialization_config.save.compute_crc32 = True
    return b'{"prompt_embeds": "' + pybase64.b64encode(buffer.getbuffer()) + b'", "model": "m", "max_tokens": 16}'


def _streamed(tensor: torch.Tensor) -> EmbedsBody:
    """What the proxy does now: archive written directly, tensor bytes referenced, base64 in slices as sent."""
    return EmbedsBody({"prompt_embeds": PromptEmbeds(tensor), "model": "m", "max_tokens": 16})


def run(opts: Options) -> dict[str, Any]:
    """Each variant: encode only, and encode + send; medians of interleaved rounds."""
    rows_n = 256 if opts.quick else 2048
    rounds = 3 if opts.quick else 25
    tensor = (torch.randn(rows_n, common.LONG_HIDDEN) * 0.02).to(torch.bfloat16)
    variants: dict[str, Callable[[], Any]] = {
        "naive: torch.save + stdlib base64 + json.dumps": lambda: _naive(tensor, base64.b64encode),
        "pybase64 (the first proxy path)": lambda: _naive(tensor, pybase64.b64encode),
        "+ no CRC32, bytes splice": lambda: _no_crc_join(tensor),
        "+ archive written directly, streamed base64 (kept)": lambda: _streamed(tensor),
    }
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    sink = ctx.Process(target=_sink, args=(listener,), daemon=True)
    sink.start()
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        encode: dict[str, list[float]] = {k: [] for k in variants}
        send: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(2):  # warm up
            for make in variants.values():
                session.post(url, data=_materialise(make()), timeout=60)
        for _ in range(rounds):  # interleaved: drift hits every variant alike
            for name, make in variants.items():
                t0 = time.perf_counter()
                body = _materialise(make())
                t1 = time.perf_counter()
                session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60).close()
                t2 = time.perf_counter()
                del body  # freed here, outside the next variant's timing
                encode[name].append((t1 - t0) * 1e3)
                send[name].append((t2 - t0) * 1e3)
        floor = _floor(tensor, session, url, rounds)
    finally:
        sink.terminate()
        listener.close()
    b64_bytes = 4 * ((tensor.nbytes + 2) // 3)
    results = {
        name: {"encode_ms": common.summary(encode[name]), "encode_and_send_ms": common.summary(send[name])}
        for name in variants
    }
    naive = results[next(iter(variants))]["encode_and_send_ms"]["p50"]
    rows = [
        [
            name,
            r["encode_ms"]["p50"],
            r["encode_and_send_ms"]["p50"],
            r["encode_and_send_ms"]["p95"],
            naive / r["encode_and_send_ms"]["p50"],
        ]
        for name, r in results.items()
    ]
    rows += [
        [f"floor: memcpy {tensor.nbytes / 1e6:.1f} MB", floor["memcpy_ms"], "", "", ""],
        [f"floor: loopback sendall {b64_bytes / 1e6:.1f} MB", "", floor["send_ms"], "", ""],
        [
            "floor: memcpy + send",
            "",
            floor["memcpy_ms"] + floor["send_ms"],
            "",
            naive / (floor["memcpy_ms"] + floor["send_ms"]),
        ],
    ]
    text = common.table(
        f"Encode and send {rows_n} x {common.LONG_HIDDEN} bf16 to a loopback sink (ms, p50 of {rounds})",
        ["path", "encode", "encode + send", "encode + send p95", "x faster than naive"],
        rows,
    )
    _plot(results, floor, opts.out / "payload.png", rows_n)
    return {
        "rows": rows_n,
        "hidden": common.LONG_HIDDEN,
        "raw_bytes": tensor.nbytes,
        "b64_bytes": b64_bytes,
        "variants": results,
        "floor": floor,
        "table": text,
        "errors": 0,
    }


def _materialise(body: Any) -> Any:
    return body


def _floor(tensor: torch.Tensor, session: requests.Session, url: str, rounds: int) -> dict[str, float]:
    """memcpy into an already-faulted buffer; one sendall of the base64's size through the same sink."""
    src = tensor.view(torch.uint8).flatten()
    dst = torch.empty_like(src)
    dst.copy_(src)
    memcpy = common.timed(lambda: dst.copy_(src), rounds)
    size = 4 * ((tensor.nbytes + 2) // 3)
    body = b"{" + b"x" * (size - 2) + b"}"
    sends = common.timed(lambda: session.post(url, data=body, timeout=60).close(), rounds)
    return {
        "memcpy_ms": common.pct(memcpy, 50),
        "send_ms": common.pct(sends, 50),
        "memcpy_GBps": tensor.nbytes / common.pct(memcpy, 50) / 1e6,
        "send_GBps": size / common.pct(sends, 50) / 1e6,
    }


def _plot(results: dict[str, Any], floor: dict[str, float], path: Any, rows_n: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = [*results, "floor (memcpy + send)"]
    values = [r["encode_and_send_ms"]["p50"] for r in results.values()] + [floor["memcpy_ms"] + floor["send_ms"]]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(range(len(names)), values, color=["#c44"] * (len(names) - 2) + ["#4a4", "#888"])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"encode + send, ms (p50), {rows_n} x 4096 bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
