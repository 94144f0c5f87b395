"""Train and evaluate a set of SGTs side by side on one GPU: the privacy/utility frontier study.

    python scripts/sgt_frontier.py train --model M.gguf --configs docs/sgt-results/frontier-configs.json \
        --out DIR [--only a,b] [--device cuda]
    python scripts/sgt_frontier.py eval --model M.gguf --out DIR --jobs JOBS.json [--parallel N]

``train`` starts one ``python -m proxy.sgt train`` per configuration (a JSON object of
``name -> {TrainConfig field: value}``, the ``"_defaults"`` entry applied to all) at once,
waits for all, and writes ``DIR/NAME.pt`` (estimator weights), ``DIR/NAME.log`` and
``DIR/train-summary.json`` (final losses, steps, seconds, and the loss history every 50
steps, read from each run's checkpoint). ``eval`` runs ``python -m proxy.sgt eval`` jobs
(``name -> [extra CLI arguments]``), ``N`` at a time, each writing ``DIR/eval-NAME.json``.
Why processes, not threads: each run is small (a 135M model, batch 16) and launch-bound; several
at once fill the GPU, and a crash of one costs only that one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def _flag(key: str, value: object) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


def train(args: argparse.Namespace) -> int:
    configs = json.loads(Path(args.configs).read_text(encoding="utf-8"))
    defaults = configs.pop("_defaults", {})
    only = [n for n in args.only.split(",") if n] if args.only else list(configs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    started = time.time()
    for name in only:
        config = {**defaults, **configs[name]}
        cmd = [sys.executable, "-m", "proxy.sgt", "train", "--model", args.model, "--device", args.device]
        cmd += ["--weights", str(out / f"{name}.pt"), "--checkpoint", str(out / f"{name}.ckpt"), "--no-progress"]
        for key, value in config.items():
            cmd += _flag(key, value)
        log = open(out / f"{name}.log", "w", encoding="utf-8")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, config)
        print(f"started {name}: {' '.join(cmd[3:])}", flush=True)
    summary = {}
    for name, (proc, log, config) in procs.items():
        rc = proc.wait()
        log.close()
        entry: dict = {"rc": rc, "config": config, "wall_s": round(time.time() - started, 1)}
        ckpt = out / f"{name}.ckpt"
        if ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            history = state["history"]
            entry["steps"], entry["seconds"] = state["step"], round(state["seconds"], 1)
            entry["history"] = [
                {
                    "step": i + 1,
                    **{
                        k: round(sum(h[k] for h in history[i : i + 50]) / len(history[i : i + 50]), 4)
                        for k in history[i]
                    },
                }
                for i in range(0, len(history), 50)
            ]
            ckpt.unlink()  # the optimiser's state: not needed any more, and large
        summary[name] = entry
        print(f"{name}: rc={rc} steps={entry.get('steps')} s={entry.get('seconds')}", flush=True)
    (out / "train-summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0 if all(e["rc"] == 0 for e in summary.values()) else 1


def evaluate(args: argparse.Namespace) -> int:
    jobs = json.loads(Path(args.jobs).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = list(jobs.items())
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    codes = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, extra = pending.pop(0)
            cmd = [sys.executable, "-m", "proxy.sgt", "eval", "--model", args.model, "--device", args.device]
            cmd += ["--json", str(out / f"eval-{name}.json"), "--no-progress", *map(str, extra)]
            log = open(out / f"eval-{name}.log", "w", encoding="utf-8")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, time.time())
            print(f"eval {name}: {' '.join(map(str, extra))}", flush=True)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[name] = proc.returncode
                print(f"eval {name}: rc={proc.returncode} in {time.time() - t0:.0f}s", flush=True)
                del running[name]
        time.sleep(1)
    (out / "eval-codes.json").write_text(json.dumps(codes), encoding="utf-8")
    return 0 if all(c == 0 for c in codes.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--configs", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--only", default="")
    t.add_argument("--device", default="cuda")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--jobs", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--parallel", type=int, default=6)
    e.add_argument("--device", default="cuda")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
