"""The transform per stage: template, embed, estimators, copy back, encode (on CPU, and on CUDA if asked).

Why per stage: it shows where a request's time goes before the upstream is
called, and which stage a lever moves. On CUDA it also compares the copy back
from pageable and from pinned host memory (the proxy uses pinned).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench import common
from bench.common import Options
from proxy.sgt import SGTRuntime
from proxy.upstream import EmbedsBody, PromptEmbeds

STAGES = ("template", "embed", "estimators", "copy", "encode", "total")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runtime: SGTRuntime, messages: list[dict[str, str]], repeat: int) -> dict[str, Any]:
    """Milliseconds of each stage, repeated; the stages are those of ``SGTRuntime.obfuscate`` and the body."""
    device = runtime.device
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    tokens = 0
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        prompt = runtime.renderer.render_chat(messages)
        t1 = time.perf_counter()
        rows = runtime.embed(prompt).to(device, non_blocking=True)
        mask = prompt.mask.to(device, non_blocking=True)
        _sync(device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            out = runtime.transform(rows, mask)
        _sync(device)
        t3 = time.perf_counter()
        if out.device.type == "cpu":
            host = out.contiguous()
        else:
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out)
        t4 = time.perf_counter()
        body = EmbedsBody({"prompt_embeds": PromptEmbeds(host), "model": "m", "max_tokens": 16})
        for _chunk in body:  # the base64 is made while the body is iterated (sent)
            pass
        t5 = time.perf_counter()
        tokens = len(prompt)
        if i >= 2:  # two warm-up rounds
            for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4, t0), (t1, t2, t3, t4, t5, t5), strict=True):
                times[name].append((b - a) * 1e3)
    return {
        "tokens": tokens,
        "hidden": runtime.hidden_size,
        "dtype": str(runtime.table.dtype),
        **{s: common.summary(v) for s, v in times.items()},
    }


def copy_back(rows: int, hidden: int, repeat: int) -> dict[str, float]:
    """CUDA only: device-to-host copy of a bf16 [rows, hidden] from pageable vs pinned memory (ms p50)."""
    src = torch.randn(rows, hidden, device="cuda").to(torch.bfloat16)
    torch.cuda.synchronize()
    pageable = common.timed(lambda: src.to("cpu"), repeat)

    def pinned() -> None:
        host = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        host.copy_(src)

    return {
        "rows": rows,
        "pageable_ms": common.pct(pageable, 50),
        "pinned_ms": common.pct(common.timed(pinned, repeat), 50),
    }


def run(opts: Options) -> dict[str, Any]:
    """Short chat on the tiny SGT, long chat (2048 x 4096 bf16, estimators at width 512) on the synthetic one."""
    repeat = 5 if opts.quick else 30
    torch.set_num_threads(1)  # as in a proxy worker (SGP_TORCH_THREADS=1)
    devices = ["cpu"] + (["cuda"] if opts.device == "cuda" and torch.cuda.is_available() else [])
    tiny = common.tiny_sgt(opts.out)
    long_sgt = common.synthetic_sgt(opts.out, common.LONG_VOCAB if not opts.quick else 4096)
    long_tokens = 256 if opts.quick else common.LONG_TOKENS
    results = []
    for device in devices:
        for name, sgt, messages in (
            ("short chat", tiny, common.short_messages()),
            (f"long chat ({long_tokens} x 4096)", long_sgt, common.long_messages(long_sgt, long_tokens)),
        ):
            runtime = SGTRuntime.load(sgt, device=device)
            results.append({"case": name, "device": device, **measure(runtime, messages, repeat)})
    copies = []
    if "cuda" in devices:
        copies = [copy_back(n, 4096, repeat) for n in (2048, 8192)]
    rows = [[r["case"], r["device"], r["tokens"], *(r[s]["p50"] for s in STAGES), r["total"]["p95"]] for r in results]
    text = common.table(
        f"Transform per stage (ms, p50 of {repeat}; torch threads {torch.get_num_threads()})",
        ["case", "device", "tokens", *STAGES, "total p95"],
        rows,
    )
    if copies:
        text += common.table(
            "Copy back from the GPU, bf16 x 4096 (ms, p50)",
            ["rows", "pageable", "pinned"],
            [[c["rows"], c["pageable_ms"], c["pinned_ms"]] for c in copies],
        )
    _plot(results, opts.out / f"stages-{opts.device}.png")
    return {"torch_threads": torch.get_num_threads(), "cases": results, "copy_back": copies, "table": text, "errors": 0}


def _plot(results: list[dict[str, Any]], path: Any) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(results)))
    labels = [f"{r['case']} ({r['device']})" for r in results]
    left = [0.0] * len(results)
    for stage in STAGES[:-1]:
        widths = [r[stage]["p50"] for r in results]
        ax.barh(labels, widths, left=left, label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("ms (p50), stacked")
    ax.legend(fontsize=7, ncols=5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
