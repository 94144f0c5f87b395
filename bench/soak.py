"""``make soak``: many concurrent clients, mixed streamed and whole, for a fixed time; nothing may be lost.

Through the proxy (2 gunicorn workers) to ``inference_server`` running the tiny
real model. Every request must end as a complete answer (whole JSON with
choices, or a stream that ends in ``[DONE]`` with no error event) or a clear
OpenAI error; anything else counts as lost. The proxy's resident memory is
sampled throughout, so a leak shows as growth between the first and last third.

    python -m bench.soak [--clients 64] [--duration 60] [--out .bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import model_upstream, proxy, running, table, tiny_sgt, write_json


def _one(session: requests.Session, url: str, i: int) -> str:
    """``ok``, ``error`` (a clear OpenAI error) or ``lost``."""
    streamed = i % 2 == 1
    if i % 4 < 2:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": f"soak request {i}"}]}
    else:
        path, body = "/v1/completions", {"prompt": f"soak request {i}"}
    body.update(model="m", max_tokens=8, stream=streamed, seed=i)
    try:
        with session.post(url + path, json=body, stream=streamed, timeout=60) as r:
            if r.status_code != 200:
                return "error" if "error" in r.json() else "lost"
            if not streamed:
                return "ok" if r.json().get("choices") else "lost"
            lines = [line for line in r.iter_lines() if line]
            if lines and lines[-1] == b"data: [DONE]":
                return "error" if any(b'"error"' in line[:12] for line in lines) else "ok"
            return "lost"
    except (requests.RequestException, ValueError):
        return "lost"


def _rss(pid: int) -> int:
    """Resident memory of the gunicorn master and its workers, in bytes."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def soak(out: Path, clients: int, duration: float) -> dict[str, Any]:
    upstream = model_upstream(out)
    service = proxy(out, tiny_sgt(out, noise_scale=0.3), upstream, workers=2, threads=max(16, clients // 2))
    counts = {"ok": 0, "error": 0, "lost": 0}
    lock = threading.Lock()
    memory: list[tuple[float, int]] = []
    start = time.monotonic()
    deadline = start + duration

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.monotonic() < deadline:
            outcome = _one(session, service.url, i)
            with lock:
                counts[outcome] += 1
            i += clients

    with running(upstream, service):
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            memory.append((time.monotonic() - start, _rss(service.proc.pid)))
            time.sleep(min(2.0, duration / 10))
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    third = max(1, len(memory) // 3)
    early = sum(m for _, m in memory[:third]) / third
    late = sum(m for _, m in memory[-third:]) / third
    result = {
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "requests": sum(counts.values()),
        **counts,
        "requests_per_s": round(sum(counts.values()) / elapsed, 1),
        "rss_early_mb": round(early / 2**20, 1),
        "rss_late_mb": round(late / 2**20, 1),
        "rss_growth_pct": round(100 * (late - early) / early, 1),
    }
    table(
        "Soak: mixed chat/completions, streamed and whole, through 2 workers to the tiny model",
        list(result),
        [list(result.values())],
    )
    write_json(out, "soak", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--out", type=Path, default=Path(".bench"))
    args = parser.parse_args(argv)
    result = soak(args.out, args.clients, args.duration)
    print(json.dumps(result))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
