"""The estimator-weights file: a trained transform without the model's embedding table.

A whole SGT file carries the embedding table (about 110 MB for SmolLM2-135M), too big
to commit; the weights file carries only the estimators (a few MB) plus a fingerprint
of the table they were trained against. ``python -m sgt_tools assemble`` joins it with
the model's tokenizer and table into a normal SGT file. Plain tensors and data only:
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from proxy.sgt.file import SGTFileError, save_sgt_file
from proxy.sgt.transform import EstimatorConfig, StainedGlassTransform

WEIGHTS_FORMAT = "stained-glass-transform-weights"
WEIGHTS_VERSION = 1


def table_fingerprint(table: torch.Tensor) -> dict[str, Any]:
    """Shape and a few float64 sums: enough to refuse a table other than the one trained against."""
    t = table.detach().double()
    return {
        "shape": list(t.shape),
        "sum": float(t.sum()),
        "abs_sum": float(t.abs().sum()),
        "sq_sum": float((t * t).sum()),
    }


def save_weights(
    path: str | os.PathLike, transform: StainedGlassTransform, table: torch.Tensor, name: str, training: dict[str, Any]
) -> Path:
    path = Path(path)
    data = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "model": name,
        "estimator": transform.config.to_dict(),
        "state_dict": {k: v.detach().cpu().float().contiguous() for k, v in transform.state_dict().items()},
        "table": table_fingerprint(table),
        "training": training,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def fold_noise_scale(data: dict[str, Any], scale: float) -> dict[str, Any]:
    """An SGT (or weights) dict whose sigma, floor included, is ``scale`` times the original's.

    The same transform as serving the original with ``SGP_NOISE_SCALE=scale``: a trained point
    moved along its curve and shipped as the default. Recorded in ``training.noise_scale_folded``.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number > 0, not {scale}")
    state = dict(data["state_dict"])
    state["log_sigma_base"] = state["log_sigma_base"] + math.log(scale)
    estimator = dict(data["estimator"])
    if "sigma_floor" in state:
        state["sigma_floor"] = state["sigma_floor"] * scale
        estimator["min_sigma"] = float(estimator.get("min_sigma", 0.0)) * scale
    training = dict(data.get("training") or {})
    training["noise_scale_folded"] = float(training.get("noise_scale_folded", 1.0)) * scale
    return {**data, "state_dict": state, "estimator": estimator, "training": training}


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SGTFileError(f"estimator weights {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT or data.get("version") != WEIGHTS_VERSION:
        raise SGTFileError(f"{path} is not an estimator-weights file of version {WEIGHTS_VERSION}")
    return data


def _same_table(expected: dict[str, Any], table: torch.Tensor) -> bool:
    got = table_fingerprint(table)
    if got["shape"] != expected["shape"]:
        return False
    return all(abs(got[k] - expected[k]) <= 1e-6 * max(1.0, abs(expected[k])) for k in ("sum", "abs_sum", "sq_sum"))


def assemble_sgt(
    model_path: str | os.PathLike,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    table_dtype: torch.dtype | None = None,
) -> Path:
    """``python -m sgt_tools assemble``: weights file + model (tokenizer, template, table) -> SGT file."""
    from sgt_tools.build import sgt_content
    from sgt_tools.models import load_model

    data = load_weights(weights)
    model, tokenizer = load_model(model_path)
    table = model.get_input_embeddings().weight.detach()
    if not _same_table(data["table"], table):
        raise SGTFileError(
            f"estimator weights {weights} were trained against another embedding table than {model_path}'s"
        )
    transform = StainedGlassTransform(EstimatorConfig(**data["estimator"]))
    transform.load_state_dict(data["state_dict"])
    name = Path(model_path).stem if str(model_path).endswith(".gguf") else Path(model_path).name
    content = sgt_content(model, tokenizer, transform, name=name, table_dtype=table_dtype, training=data["training"])
    return save_sgt_file(out, content)
