"""Assemble an SGT file from a causal LM: tokenizer, template, table, estimators."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxy.sgt.file import save_sgt_file
from proxy.sgt.transform import EstimatorConfig, StainedGlassTransform

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def tokenizer_content(tokenizer: PreTrainedTokenizerBase, name: str = "the model") -> dict[str, Any]:
    """The tokenizer part of an SGT file: exactly the arguments of :class:`~proxy.sgt.PromptRenderer`.

    Shared by the file writer and the tools' renderer (:func:`sgt_tools.lab.renderer_for`), so that
    training and evaluation mask exactly what serving will.
    """
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if not template:
        raise ValueError(f"the tokenizer of {name} has no chat template")
    special = {k: str(getattr(tokenizer, k)) for k in SPECIAL_TOKEN_NAMES if getattr(tokenizer, k, None)}
    return {
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "chat_template": template,
        "special_tokens": special,
    }


def sgt_content(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    transform: StainedGlassTransform,
    name: str,
    table_dtype: torch.dtype | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything an SGT file holds, as plain data and tensors."""
    table = model.get_input_embeddings().weight.detach()
    if table_dtype is not None:
        table = table.to(table_dtype)
    return {
        "model": {
            "name": name,
            "hidden_size": int(table.shape[1]),
            "vocab_size": int(table.shape[0]),
            "max_model_len": int(getattr(model.config, "max_position_embeddings", 2048)),
            "dtype": str(table.dtype).removeprefix("torch."),
        },
        "tokenizer": tokenizer_content(tokenizer, name),
        "estimator": transform.config.to_dict(),
        "embedding": table,
        "state_dict": transform.state_dict(),
        "training": training or {"trained": False},
    }


def untrained_transform(table: torch.Tensor, width: int = 256, noise_scale: float = 0.3) -> StainedGlassTransform:
    """Zero mean, sigma = noise_scale x the table's per-dimension std."""
    config = EstimatorConfig(hidden_size=int(table.shape[1]), width=width, noise_scale=noise_scale)
    return StainedGlassTransform(config, table_std=table.float().std(dim=0))


def build_sgt(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    width: int = 256,
    noise_scale: float = 0.3,
    table_dtype: torch.dtype | None = None,
) -> Path:
    """``python -m sgt_tools build``: an untrained (calibrated Gaussian) SGT for a model."""
    from sgt_tools.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(model_path)
    table = model.get_input_embeddings().weight.detach()
    transform = untrained_transform(table, width=width, noise_scale=noise_scale)
    name = Path(model_path).stem if str(model_path).endswith(".gguf") else Path(model_path).name
    content = sgt_content(model, tokenizer, transform, name=name, table_dtype=table_dtype)
    return save_sgt_file(out, content)
