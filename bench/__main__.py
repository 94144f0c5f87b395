"""``python -m bench [--quick] [--out DIR] [--only a,b] [--device cpu|cuda]``: run the benchmarks.

Each benchmark prints its tables, writes ``DIR/<name>-<device>.json`` and draws
PNG plots beside it; ``DIR/summary-<device>.json`` gathers what ran and every
error count. ``--quick`` is the CI smoke run: a few samples of everything.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench import common

BENCHMARKS = ("payload", "stages", "overhead", "throughput", "memory")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in order; a failed one is reported and the rest still run."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per benchmark")
    p.add_argument("--out", type=Path, default=Path(".bench"), help="folder for JSON, plots, assets and logs")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--pairs", type=int, help="overhead: interleaved pairs per case and mode (default 300/60/30)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the transform runs (SGP_DEVICE)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    opts = common.Options(out=args.out.resolve(), quick=args.quick, device=args.device, pairs=args.pairs)
    summary: dict[str, object] = {"quick": args.quick, "device": args.device, "benchmarks": {}}
    failed = False
    for name in names:
        t0 = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        try:
            result = importlib.import_module(f"bench.{name}").run(opts)
        except Exception:  # noqa: BLE001 - report it, run the others
            traceback.print_exc()
            summary["benchmarks"][name] = {"ok": False, "error": traceback.format_exc(limit=3)}  # type: ignore[index]
            failed = True
            continue
        path = common.write_json(opts.out, f"{name}-{args.device}", result)
        summary["benchmarks"][name] = {  # type: ignore[index]
            "ok": True,
            "seconds": round(time.perf_counter() - t0, 1),
            "json": str(path),
            "errors": _errors(result),
        }
    common.write_json(opts.out, f"summary-{args.device}", summary)
    return 1 if failed else 0


def _errors(result: object) -> int:
    """Every ``errors`` count anywhere in a result, summed (must be 0)."""
    if isinstance(result, dict):
        own = result.get("errors") if isinstance(result.get("errors"), int) else 0
        return own + sum(_errors(v) for k, v in result.items() if k != "errors")
    if isinstance(result, list):
        return sum(_errors(v) for v in result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
