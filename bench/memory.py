"""Resident memory of 1 and of 4 gunicorn workers serving an SGT with a table of about 1 GB.

Why PSS beside RSS: the table is mmap'd from the file, so its pages sit once in
the page cache and every worker maps them; RSS counts them in every worker,
PSS splits them between the workers. What a worker really adds is its PSS
growth, which should stay far below the file's size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import requests

from bench import common
from bench.common import Options


def _processes(service: common.Service) -> list[psutil.Process]:
    master = psutil.Process(service.proc.pid)
    return [master, *master.children(recursive=True)]


def measure(opts: Options, sgt: Path, workers: int, upstream: common.Service, requests_n: int) -> dict[str, Any]:
    """Start ``workers`` workers, send a few requests (each worker serves some), read RSS/PSS of each process."""
    px = common.proxy(opts.out, sgt, upstream, workers=workers, threads=4)
    with common.running(px):
        body = json.dumps({"model": "m", "messages": common.short_messages(), "max_tokens": 4}).encode()
        session = requests.Session()
        errors = 0
        for _ in range(requests_n):
            errors += (
                common.call(
                    requests.Session() if workers > 1 else session, px.url + "/v1/chat/completions", body, False
                ).error
                is not None
            )
        procs = _processes(px)
        infos = []
        for i, proc in enumerate(procs):
            mem = proc.memory_full_info()
            infos.append(
                {
                    "pid": proc.pid,
                    "role": "master" if i == 0 else "worker",
                    "rss_mb": mem.rss / 1e6,
                    "pss_mb": mem.pss / 1e6,
                    "uss_mb": mem.uss / 1e6,
                }
            )
    worker_infos = [p for p in infos if p["role"] == "worker"]
    return {
        "workers": workers,
        "processes": infos,
        "total_rss_mb": sum(p["rss_mb"] for p in infos),
        "total_pss_mb": sum(p["pss_mb"] for p in infos),
        "worker_rss_mb": sum(p["rss_mb"] for p in worker_infos) / max(len(worker_infos), 1),
        "worker_pss_mb": sum(p["pss_mb"] for p in worker_infos) / max(len(worker_infos), 1),
        "worker_uss_mb": sum(p["uss_mb"] for p in worker_infos) / max(len(worker_infos), 1),
        "errors": errors,
    }


def run(opts: Options) -> dict[str, Any]:
    """1 then 4 (quick: 2) workers on one file; per extra worker: (total PSS(4) - total PSS(1)) / 3."""
    vocab = 4096 if opts.quick else common.BIG_VOCAB
    sgt = common.synthetic_sgt(opts.out, vocab)
    file_mb = sgt.stat().st_size / 1e6
    up = common.null_upstream(opts.out, hidden=common.LONG_HIDDEN, tokens=4)
    with common.running(up):
        one = measure(opts, sgt, 1, up, 4)
        many = 2 if opts.quick else 4
        four = measure(opts, sgt, many, up, 4 * many)
    extra_pss = (four["total_pss_mb"] - one["total_pss_mb"]) / (many - 1)
    extra_uss = four["worker_uss_mb"]
    rows = [
        [r["workers"], r["total_rss_mb"], r["total_pss_mb"], r["worker_rss_mb"], r["worker_pss_mb"], r["worker_uss_mb"]]
        for r in (one, four)
    ]
    text = common.table(
        f"Resident memory, SGT file {file_mb:,.0f} MB ({vocab} x 4096 bf16 table) (MB)",
        ["workers", "total RSS", "total PSS", "RSS a worker", "PSS a worker", "USS a worker"],
        rows,
    )
    text += common.table(
        "Each extra worker",
        ["added PSS (MB)", "% of file", "USS a worker (MB)", "% of file"],
        [[extra_pss, 100 * extra_pss / file_mb, extra_uss, 100 * extra_uss / file_mb]],
    )
    return {
        "file_mb": file_mb,
        "vocab": vocab,
        "one": one,
        "four": four,
        "extra_worker_pss_mb": extra_pss,
        "extra_worker_pss_pct_of_file": 100 * extra_pss / file_mb,
        "table": text,
        "errors": one["errors"] + four["errors"],
    }
