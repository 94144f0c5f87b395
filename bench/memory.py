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


def measure(
    opts: Options, sgt: Path, workers: int, upstream: common.Service, requests_n: int, preload: str = "1"
) -> dict[str, Any]:
    """Start ``workers`` workers, send a few requests (each worker serves some), read RSS/PSS of each process.

    ``preload`` is GUNICORN_PRELOAD_MODULES: "1" imports the proxy's modules in the
    gunicorn master before the fork (shared pages), "0" in each worker.
    """
    px = common.proxy(opts.out, sgt, upstream, workers=workers, threads=4, GUNICORN_PRELOAD_MODULES=preload)
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
    """1 then 4 (quick: 2) workers on one file; per extra worker: (total PSS(4) - total PSS(1)) / 3.

    The full run measures both ways of importing the modules (in each worker,
    and once in the master before the fork); ``one``/``four`` are the default
    (in the master).
    """
    vocab = 4096 if opts.quick else common.BIG_VOCAB
    sgt = common.synthetic_sgt(opts.out, vocab)
    file_mb = sgt.stat().st_size / 1e6
    many = 2 if opts.quick else 4
    up = common.canned_upstream(opts.out, tokens=4)  # starts in a blink; the proxy's memory is what we read
    modes = {"master": "1"} if opts.quick else {"worker": "0", "master": "1"}
    results: dict[str, Any] = {}
    with common.running(up):
        for mode, preload in modes.items():
            one = measure(opts, sgt, 1, up, 4, preload)
            four = measure(opts, sgt, many, up, 4 * many, preload)
            extra = (four["total_pss_mb"] - one["total_pss_mb"]) / (many - 1)
            results[mode] = {"one": one, "four": four, "extra_worker_pss_mb": extra}
    rows = [
        [
            mode,
            r["workers"],
            r["total_rss_mb"],
            r["total_pss_mb"],
            r["worker_rss_mb"],
            r["worker_pss_mb"],
            r["worker_uss_mb"],
        ]
        for mode, res in results.items()
        for r in (res["one"], res["four"])
    ]
    text = common.table(
        f"Resident memory, SGT file {file_mb:,.0f} MB ({vocab} x 4096 bf16 table) (MB)",
        ["modules imported in", "workers", "total RSS", "total PSS", "RSS a worker", "PSS a worker", "USS a worker"],
        rows,
    )
    text += common.table(
        "Each extra worker",
        ["modules imported in", "added PSS (MB)", "% of file", "USS a worker (MB)", "% of file"],
        [
            [
                mode,
                res["extra_worker_pss_mb"],
                100 * res["extra_worker_pss_mb"] / file_mb,
                res["four"]["worker_uss_mb"],
                100 * res["four"]["worker_uss_mb"] / file_mb,
            ]
            for mode, res in results.items()
        ],
    )
    main = results["master"]
    return {
        "file_mb": file_mb,
        "vocab": vocab,
        "one": main["one"],
        "four": main["four"],
        "modes": results,
        "extra_worker_pss_mb": main["extra_worker_pss_mb"],
        "extra_worker_pss_pct_of_file": 100 * main["extra_worker_pss_mb"] / file_mb,
        "table": text,
        "errors": sum(r["errors"] for res in results.values() for r in (res["one"], res["four"])),
    }
