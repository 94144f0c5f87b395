"""A/B of two versions of the proxy in one run: direct, proxy at REF, proxy here; interleaved.

Why: on a shared 2-core VM the absolute added latency drifts by a millisecond
between runs, more than most changes save. Three calls per round (direct,
the other version, this one, in rotating order) against one upstream make
the difference between the versions exact to a tenth of a millisecond.

    python -m bench.compare HEAD~3 --rounds 250 [--stream]

REF is checked out into a temporary git worktree; each proxy runs its own
tree's gunicorn.conf.py and code (from its own directory: gunicorn puts the
working directory first on the path).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from bench import common
from bench.overhead import _direct_body
from tests.procs import ROOT, Service

ORDERS = [("direct", "ref", "here"), ("here", "direct", "ref"), ("ref", "here", "direct")]
ORDERS += [tuple(reversed(o)) for o in ORDERS]
WARMUP = 10


def _proxy(tree: Path, name: str, sgt: Path, upstream: Service, out: Path) -> Service:
    env = {"SGP_SGT_PATH": str(sgt), "SGP_INFERENCE_SERVICE_HOST": upstream.url, "SGP_MAX_NEW_TOKENS": "16"}
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", f"{tree}/gunicorn.conf.py", "-b", "127.0.0.1:{port}"]
    argv = ["bash", "-c", f'cd "{tree}" && exec "$@"', "run", *gunicorn, "-w", "1", "--access-logfile", "/dev/null"]
    return Service(name, [*argv, "wsgi:app"], common._logs(out), env=env).wait_http("/livez")


def _ref_sgt(tree: Path, out: Path) -> Path:
    """The same tiny SGT, built by REF's own code: an SGT file can carry settings an older runtime does not know."""
    ref_out = out / "ref"
    code = f"from pathlib import Path; from bench import common; common.tiny_sgt(Path({str(ref_out)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True)
    return ref_out / "assets" / "sgt-tiny-0.0.pt"


def compare(ref: str, rounds: int, streamed: bool, out: Path) -> dict:
    sgt = common.tiny_sgt(out, noise_scale=0.0)
    with tempfile.TemporaryDirectory(prefix="sgp-compare-") as tmp:
        tree = Path(tmp) / "ref"
        git = ["git", "worktree", "add", "--detach", str(tree), ref]
        subprocess.run(git, cwd=ROOT, check=True, capture_output=True)
        try:
            up = common.null_upstream(out, hidden=64, tokens=16, dtype="float32")
            ref_proxy = _proxy(tree, "proxy-ref", _ref_sgt(tree, out), up, out)
            here_proxy = _proxy(ROOT, "proxy-here", sgt, up, out)
            with common.running(up, ref_proxy, here_proxy):
                model = requests.get(up.url + "/v1/models", timeout=10).json()["data"][0]["id"]
                chat = {"model": "m", "messages": common.short_messages(), "max_tokens": 16, "stream": streamed}
                chat_body = json.dumps(chat).encode()
                targets = {
                    "direct": (up.url + "/v1/completions", _direct_body(sgt, chat["messages"], model, 16, streamed)),
                    "ref": (ref_proxy.url + "/v1/chat/completions", chat_body),
                    "here": (here_proxy.url + "/v1/chat/completions", chat_body),
                }
                session = requests.Session()
                times: dict[str, list[float]] = {name: [] for name in targets}
                for i in range(rounds + WARMUP):
                    for name in ORDERS[i % len(ORDERS)]:
                        call = common.call(session, *targets[name], streamed)
                        if call.error:
                            raise RuntimeError(f"{name}: {call.error}")
                        if i >= WARMUP:
                            times[name].append(call.total_ms)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    added = {name: [t - d for t, d in zip(times[name], times["direct"], strict=True)] for name in ("ref", "here")}
    diff = [h - r for h, r in zip(times["here"], times["ref"], strict=True)]
    return {
        "ref": ref,
        "mode": "stream" if streamed else "whole",
        "rounds": rounds,
        "direct_ms": common.summary(times["direct"]),
        "added_ref_ms": common.summary(added["ref"]),
        "added_here_ms": common.summary(added["here"]),
        "here_minus_ref_ms": common.summary(diff),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the git ref to compare this tree with")
    parser.add_argument("--rounds", type=int, default=250)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench")
    args = parser.parse_args()
    result = compare(args.ref, args.rounds, args.stream, args.out)
    rows = [
        [
            result["mode"],
            args.rounds,
            result["direct_ms"]["p50"],
            result["added_ref_ms"]["p50"],
            result["added_here_ms"]["p50"],
            result["added_ref_ms"]["p95"],
            result["added_here_ms"]["p95"],
            result["here_minus_ref_ms"]["p50"],
        ]
    ]
    header = ["mode", "rounds", "direct p50", "added p50 (ref)", "added p50 (here)", "p95 (ref)", "p95 (here)"]
    common.table(f"Short chat: {args.ref} vs this tree (ms)", [*header, "here - ref p50"], rows)
    common.write_json(args.out, f"compare-{result['mode']}", result)


if __name__ == "__main__":
    main()
