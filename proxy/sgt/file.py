"""The SGT file: one ``torch.save`` archive of tensors and plain data.

It loads with ``torch.load(weights_only=True, mmap=True)``: nothing but tensors
and plain data is unpickled, and gunicorn workers that map the same file share
one copy of the embedding table in the page cache. The file is self-contained
(tokenizer, chat template, embedding table, estimator weights and config), so
loading never touches the network. See docs/sgt.md (the file format).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "stained-glass-transform"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "tokenizer", "estimator", "embedding", "state_dict")


class SGTFileError(Exception):
    """The SGT file is missing, damaged, unsafe or of an unknown version."""


def save_sgt_file(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Write ``content`` (tensors made contiguous, CPU) atomically to ``path``."""
    path = Path(path)
    data = dict(content, format=FORMAT, version=VERSION)
    data["embedding"] = data["embedding"].detach().cpu().contiguous()
    data["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in data["state_dict"].items()}
    _check(path, data)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def load_sgt_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate an SGT file; every failure is an :class:`SGTFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise SGTFileError(f"SGT file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise SGTFileError(f"SGT file {path} holds objects other than tensors and plain data; refused ({exc})") from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise SGTFileError(f"SGT file {path} is damaged or not an SGT file: {exc}") from exc
    _check(path, data)
    return data


def _check(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SGTFileError(f"SGT file {path} is not a Stained Glass Transform file")
    if data.get("version") != VERSION:
        raise SGTFileError(
            f"SGT file {path} has format version {data.get('version')!r}; this proxy reads version {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise SGTFileError(f"SGT file {path} lacks {', '.join(missing)}")
    table = data["embedding"]
    hidden = data["model"].get("hidden_size")
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != hidden:
        raise SGTFileError(f"SGT file {path} has an embedding table that does not match hidden_size {hidden}")
