"""Added latency: the same upstream called directly and through the proxy, in interleaved pairs.

Why pairs: on a shared 2-core machine the background drifts by more than the
proxy costs; pair i calls direct then proxy (or the other way, alternating), so
the difference within a pair cancels the drift. "Direct" POSTs the very
``prompt_embeds`` body the proxy would send (computed once here), so the
difference is exactly the proxy's work: parse, render, transform, encode,
relay, reshape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

from bench import common
from bench.common import Options


def _direct_body(sgt_path: Path, messages: list[dict[str, str]], model: str, max_tokens: int, streamed: bool) -> bytes:
    """The completions body the proxy sends upstream for this chat (same embeddings shape and dtype)."""
    from proxy.sgt import SGTRuntime
    from proxy.upstream import encode_prompt_embeds

    runtime = SGTRuntime.load(sgt_path)
    embeds = encode_prompt_embeds(runtime.obfuscate(runtime.renderer.render_chat(messages)))
    body: dict[str, Any] = {"model": model, "prompt_embeds": embeds, "max_tokens": max_tokens, "stream": streamed}
    if streamed:
        body["stream_options"] = {"include_usage": False}
    return json.dumps(body).encode()


def run_case(
    name: str,
    upstream: common.Service,
    proxy: common.Service,
    sgt: Path,
    messages: list[dict[str, str]],
    pairs: int,
    max_tokens: int,
) -> dict[str, Any]:
    """Interleaved direct/proxy pairs, whole and streamed; added latency per pair."""
    model = requests.get(upstream.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    session = requests.Session()
    result: dict[str, Any] = {"case": name, "prompt_tokens": None}
    for streamed in (False, True):
        direct_body = _direct_body(sgt, messages, model, max_tokens, streamed)
        chat = {"model": "m", "messages": messages, "max_tokens": max_tokens, "stream": streamed}
        proxy_body = json.dumps(chat).encode()
        targets = {
            "direct": (upstream.url + "/v1/completions", direct_body),
            "proxy": (proxy.url + "/v1/chat/completions", proxy_body),
        }
        for _ in range(3):  # warm both paths (connections, the upstream model name, caches)
            for url, body in targets.values():
                common.call(session, url, body, streamed)
        samples: dict[str, list[common.Call]] = {"direct": [], "proxy": []}
        for i in range(pairs):
            order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
            for who in order:
                url, body = targets[who]
                samples[who].append(common.call(session, url, body, streamed))
        errors = [c.error for calls in samples.values() for c in calls if c.error]
        added = [p.total_ms - d.total_ms for d, p in zip(samples["direct"], samples["proxy"], strict=True)]
        added_ttft = [p.ttft_ms - d.ttft_ms for d, p in zip(samples["direct"], samples["proxy"], strict=True)]
        mode = "stream" if streamed else "whole"
        result[mode] = {
            "pairs": pairs,
            "errors": len(errors),
            "error_examples": errors[:3],
            "direct_ms": common.summary([c.total_ms for c in samples["direct"]]),
            "proxy_ms": common.summary([c.total_ms for c in samples["proxy"]]),
            "added_ms": common.summary(added),
            "direct_ttft_ms": common.summary([c.ttft_ms for c in samples["direct"]]),
            "proxy_ttft_ms": common.summary([c.ttft_ms for c in samples["proxy"]]),
            "added_ttft_ms": common.summary(added_ttft),
            "added_raw_ms": added,
        }
    return result


def run(opts: Options) -> dict[str, Any]:
    """Three cases: null upstream short and long chat, tiny real model short chat."""
    out = opts.out
    # the real model and the long chat cost seconds a pair on 2 CPU cores: fewer pairs there
    short_pairs, model_pairs, long_pairs = (6, 0, 3) if opts.quick else (300, 60, 30)
    if opts.pairs:
        short_pairs, model_pairs, long_pairs = opts.pairs, max(opts.pairs // 5, 3), max(opts.pairs // 3, 3)
    tiny_sgt = common.tiny_sgt(out, noise_scale=0.0)
    cases = []
    env = {"SGP_DEVICE": opts.device}

    up = common.null_upstream(out, hidden=64, tokens=16, dtype="float32")
    px = common.proxy(out, tiny_sgt, up, **env)
    with common.running(up, px):
        cases.append(run_case("null upstream, short chat", up, px, tiny_sgt, common.short_messages(), short_pairs, 16))

    if not opts.quick:  # the real tiny model: its own noise dwarfs the proxy's cost; not for the smoke run
        up = common.model_upstream(out)
        px = common.proxy(out, tiny_sgt, up, **env)
        with common.running(up, px):
            cases.append(run_case("tiny model, short chat", up, px, tiny_sgt, common.short_messages(), model_pairs, 16))

    if opts.quick:  # the smoke run: the short case only (another two services to start costs ~10 s)
        return _report(opts, cases)
    long_sgt = common.synthetic_sgt(out, common.LONG_VOCAB)
    long_tokens = common.LONG_TOKENS
    up = common.null_upstream(out, hidden=common.LONG_HIDDEN, tokens=16)
    px = common.proxy(out, long_sgt, up, **env)
    with common.running(up, px):
        messages = common.long_messages(long_sgt, long_tokens)
        name = f"null upstream, long chat ({long_tokens} x 4096 bf16)"
        cases.append(run_case(name, up, px, long_sgt, messages, long_pairs, 16))
    return _report(opts, cases)


def _report(opts: Options, cases: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for case in cases:
        for mode in ("whole", "stream"):
            r = case[mode]
            ttft = r["added_ttft_ms"] if mode == "stream" else {"p50": "", "p95": ""}
            rows.append(
                [
                    case["case"],
                    mode,
                    r["pairs"],
                    r["direct_ms"]["p50"],
                    r["proxy_ms"]["p50"],
                    r["added_ms"]["p50"],
                    r["added_ms"]["p95"],
                    r["added_ms"]["p99"],
                    ttft["p50"],
                    ttft["p95"],
                    r["errors"],
                ]
            )
    text = common.table(
        f"Added latency through the proxy (ms, device={opts.device}; interleaved pairs)",
        [
            "case",
            "mode",
            "pairs",
            "direct p50",
            "proxy p50",
            "added p50",
            "added p95",
            "added p99",
            "added TTFT p50",
            "added TTFT p95",
            "errors",
        ],
        rows,
    )
    _plot(cases, opts.out / f"overhead-{opts.device}.png")
    return {"device": opts.device, "cases": cases, "table": text, "time": time.time()}


def _plot(cases: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        data = [case[m]["added_raw_ms"] for m in ("whole", "stream")]
        ax.boxplot(data, tick_labels=["whole", "stream"], showfliers=False)
        ax.set_title(case["case"], fontsize=9)
        ax.set_ylabel("added latency (ms)")
        ax.axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
