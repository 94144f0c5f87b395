"""Throughput of one proxy worker: 1 to 64 concurrent clients, whole and streamed answers.

The upstream is ``bench.canned`` (prebuilt answers written in 64 KiB batches):
the null ``inference_server`` streams only ~7,000 chunks/s here, which would
cap the relay at the upstream's speed. Why clients in two processes: one Python process reading 64 streams is held
back by its own GIL; two share the load (the machine has 2 cores, which the
clients, the proxy and the null upstream all share: the numbers are a floor).
The same load straight at the upstream is the reference the proxy cannot beat.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from typing import Any

import requests

from bench import common
from bench.common import Options

STREAM_TOKENS = 256


def _client_proc(url: str, body: bytes, streamed: bool, threads: int, seconds: float, queue: Any) -> None:
    """``threads`` clients looping for ``seconds``; puts (requests, chunks, errors, example) on the queue."""
    totals = [0, 0, 0]
    examples: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        session = requests.Session()
        done = chunks = errors = 0
        while time.perf_counter() < deadline:
            result = common.call(session, url, body, streamed)
            if result.error:
                errors += 1
                if len(examples) < 3:
                    examples.append(result.error)
            else:
                done += 1
                chunks += result.chunks
        with lock:
            totals[0] += done
            totals[1] += chunks
            totals[2] += errors

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put((*totals, examples))


def load(url: str, body: bytes, streamed: bool, clients: int, seconds: float) -> dict[str, Any]:
    """Run ``clients`` concurrent clients against ``url``; rates per second."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = 1 if clients == 1 else 2
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    started = time.perf_counter()
    children = [ctx.Process(target=_client_proc, args=(url, body, streamed, n, seconds, queue)) for n in shares]
    for c in children:
        c.start()
    parts = [queue.get(timeout=seconds + 120) for _ in children]
    for c in children:
        c.join()
    elapsed = time.perf_counter() - started
    done = sum(p[0] for p in parts)
    chunks = sum(p[1] for p in parts)
    return {
        "clients": clients,
        "streamed": streamed,
        "seconds": elapsed,
        "requests": done,
        "requests_per_s": done / elapsed,
        "chunks_per_s": chunks / elapsed,
        "errors": sum(p[2] for p in parts),
        "error_examples": [e for p in parts for e in p[3]][:3],
    }


def run(opts: Options) -> dict[str, Any]:
    """One worker (64 threads) in front of the canned upstream (256 chunks per streamed answer)."""
    levels = [2] if opts.quick else [1, 2, 4, 8, 16, 32, 64]
    seconds = 0.5 if opts.quick else 6.0
    sgt = common.tiny_sgt(opts.out)
    up = common.canned_upstream(opts.out, tokens=STREAM_TOKENS)
    px = common.proxy(opts.out, sgt, up, workers=1, threads=64, SGP_DEVICE=opts.device)
    model = requests.get(up.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    results: list[dict[str, Any]] = []
    reference: list[dict[str, Any]] = []
    with common.running(up, px):
        from proxy.sgt import SGTRuntime
        from proxy.upstream import encode_prompt_embeds

        runtime = SGTRuntime.load(sgt)
        embeds = encode_prompt_embeds(runtime.obfuscate(runtime.renderer.render_chat(common.short_messages())))
        for streamed in (False, True):
            max_tokens = STREAM_TOKENS if streamed else 16
            chat = {"model": "m", "messages": common.short_messages(), "max_tokens": max_tokens, "stream": streamed}
            direct = {"model": model, "prompt_embeds": embeds, "max_tokens": max_tokens, "stream": streamed}
            for clients in levels:
                results.append(
                    load(px.url + "/v1/chat/completions", json.dumps(chat).encode(), streamed, clients, seconds)
                )
            reference.append(
                load(up.url + "/v1/completions", json.dumps(direct).encode(), streamed, levels[-1], seconds)
            )
    rows = [
        [r["clients"], "stream" if r["streamed"] else "whole", r["requests_per_s"], r["chunks_per_s"], r["errors"]]
        for r in results
    ]
    rows += [
        [
            f"{r['clients']} (direct)",
            "stream" if r["streamed"] else "whole",
            r["requests_per_s"],
            r["chunks_per_s"],
            r["errors"],
        ]
        for r in reference
    ]
    text = common.table(
        f"Throughput, 1 worker x 64 threads, canned upstream ({STREAM_TOKENS} tokens a stream; {seconds:g} s a level)",
        ["clients", "mode", "requests/s", "chunks/s", "errors"],
        rows,
    )
    _plot(results, opts.out / f"throughput-{opts.device}.png")
    return {
        "levels": levels,
        "results": results,
        "direct": reference,
        "table": text,
        "errors": sum(r["errors"] for r in results + reference),
    }


def _plot(results: list[dict[str, Any]], path: Any) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for streamed, label in ((False, "whole"), (True, "stream")):
        rs = [r for r in results if r["streamed"] == streamed]
        ax[0].plot([r["clients"] for r in rs], [r["requests_per_s"] for r in rs], marker="o", label=label)
    rs = [r for r in results if r["streamed"]]
    ax[1].plot([r["clients"] for r in rs], [r["chunks_per_s"] for r in rs], marker="o", color="C1")
    for a, title in ((ax[0], "requests/s"), (ax[1], "streamed chunks/s")):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.set_title(title)
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
