"""Train and evaluate a set of SGTs side by side on one GPU: the privacy/utility frontier study.

    python scripts/sgt_frontier.py train --model M.gguf --configs docs/sgt-results/frontier-configs.json \
        --out DIR [--only a,b] [--device cuda]
    python scripts/sgt_frontier.py eval --model M.gguf --out DIR --jobs JOBS.json [--parallel N]
    python scripts/sgt_frontier.py report --dir docs/sgt-results/frontier --png docs/sgt-frontier.png \
        [--ship "sr05 noise x0.75"]

``train`` starts one ``python -m sgt_tools train`` per configuration (a JSON object of
``name -> {TrainConfig field: value}``, the ``"_defaults"`` entry applied to all) at once,
waits for all, and writes ``DIR/NAME.pt`` (estimator weights), ``DIR/NAME.log`` and
``DIR/train-summary.json`` (final losses, steps, seconds, and the loss history every 50
steps, read from each run's checkpoint). ``eval`` runs ``python -m sgt_tools eval`` jobs
(``name -> [extra CLI arguments]``), ``N`` at a time, each writing ``DIR/eval-NAME.json``.
``report`` reads every ``eval-*.json`` of a folder (the attack suite's reports), writes
``points.json`` (one point per transform: utility, each attack, combined leakage), prints the
markdown table and draws the PNG: QA against combined leakage, and the fact task against echo
leakage. Combined leakage = the mean of echo (facts, all variants), layer-1 readout, SGT-holder
inversion (best probe) and nearest neighbour (the worse of L2 and cosine); linkability is shown
apart (it is 1.0 for every point measured).
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
        cmd = [sys.executable, "-m", "sgt_tools", "train", "--model", args.model, "--device", args.device]
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
            cmd = [sys.executable, "-m", "sgt_tools", "eval", "--model", args.model, "--device", args.device]
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


def _point(r: dict) -> dict:
    u, e, inv = r["utility"], r["echo"], r["inversion"]
    cross = inv.get("cross_seed")
    out = {
        "qa": u["qa_ratio"],
        "facts_task": u["facts_ratio"],
        "echo_facts": e["combined"]["facts"],
        "echo_prompts": e["combined"]["prompts"],
        "answer_facts": e["genuine"]["facts"],
        "readout": dict(r["readout"]["layers"]),
        "inversion": inv["best"],
        "inversion_unseen": max(v for k, v in inv.items() if k.endswith("_unseen") and v is not None),
        "cross_seed": cross["best"] if isinstance(cross, dict) else None,
        "link_auc": r["linkability"]["auc"],
        "nn": max(r["nn"]["l2"], r["nn"]["cos"]),
    }
    out["combined"] = (out["echo_facts"] + out["readout"]["1"] + out["inversion"] + out["nn"]) / 4
    return out


def _name(stem: str, row: str) -> str | None:
    """Point names: the file's stem for its SGT row; a knob file's own row only (its base row repeats)."""
    if row == "clean" or row.startswith("gaussian"):
        return row
    if "-noise-" in stem:
        return None if row == "sgt" else f"{stem.split('-noise-')[0]} {row.removeprefix('sgt ')}"
    return stem


def report(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    points: dict[str, dict] = {}
    for path in sorted(folder.glob("eval-*.json")):
        stem = path.stem.removeprefix("eval-")
        for row, result in json.loads(path.read_text(encoding="utf-8"))["results"].items():
            name = _name(stem, row)
            if name and name not in points:
                points[name] = _point(result)
    (folder / "points.json").write_text(json.dumps(points, indent=1), encoding="utf-8")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    print(
        "| point | QA % of clean | fact task % of clean | echo facts % | echo prompts % | readout L1 % "
        "| inversion % | cross-seed % | NN % | link AUC | combined % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, p in sorted(points.items(), key=lambda kv: -kv[1]["qa"]):
        cells = [p["qa"], p["facts_task"], p["echo_facts"], p["echo_prompts"], p["readout"]["1"], p["inversion"]]
        cells += [p["cross_seed"], p["nn"]]
        star = " (shipped)" if name == args.ship else ""
        print(
            f"| {name}{star} | " + " | ".join(pct(c) for c in cells) + f" | {p['link_auc']:.3f} | "
            f"{pct(p['combined'])} |"
        )
    if args.png:
        _draw(points, Path(args.png), args.ship)
    return 0


def _draw(points: dict[str, dict], png: Path, ship: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = (
        ("combined", "qa", "combined leakage (% , mean of echo, L1 readout, inversion, NN)", "QA, % of clean"),
        ("echo_facts", "facts_task", "echo attack: private facts leaked (%)", "fact task, % of clean"),
    )
    gauss = sorted((n for n in points if n.startswith("gaussian")), key=lambda n: float(n.split("x")[1]))
    knob = sorted((n for n in points if " noise x" in n), key=lambda n: float(n.split("x")[-1]))
    base = knob[0].split(" noise")[0] if knob else None
    if base in points:
        knob = sorted([*knob, base], key=lambda n: 1.0 if n == base else float(n.split("x")[-1]))
    for ax, (xk, yk, xl, yl) in zip(axes, panels, strict=True):

        def xy(names: list[str], xk: str = xk, yk: str = yk) -> tuple[list[float], list[float]]:
            return [100 * points[n][xk] for n in names], [100 * points[n][yk] for n in names]

        for names, style, label in (
            (gauss, "o--", "Gaussian noise (x table std)"),
            (knob, "s-", f"{base}, SGP_NOISE_SCALE"),
        ):
            if names:
                ax.plot(*xy(names), style, label=label)
                for n, xv, yv in zip(names, *xy(names), strict=True):
                    tag = n.split(" ")[-1] if n != base else "x1"
                    ax.annotate(tag, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        others = [n for n in points if n not in gauss and n not in knob and n != "clean"]
        ax.scatter(*xy(others), marker="^", color="tab:green", label="trained SGTs", zorder=3)
        for n, xv, yv in zip(others, *xy(others), strict=True):
            ax.annotate(n, (xv, yv), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.scatter(*xy(["clean"]), marker="x", color="black", s=60, label="clean", zorder=3)
        if ship in points:
            ax.scatter(*xy([ship]), marker="*", color="red", s=260, label=f"shipped demo: {ship}", zorder=4)
        ax.axhline(90, color="grey", ls=":", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 108)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("SmolLM2-135M-Instruct: utility against the provider's attacks (150 held-out canaries, 148 QA)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


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
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--png", default=None)
    r.add_argument("--ship", default="", help="the point shipped as the demo SGT (marked)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return {"train": train, "eval": evaluate, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
