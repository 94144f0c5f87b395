"""Decode and validate ``prompt_embeds`` exactly as vLLM's loader does.

Why a module of its own: the model server and the null (benchmark) server must
accept and reject precisely the same payloads the real vLLM would.
"""

from __future__ import annotations

import binascii
import io

import pybase64
import torch

from inference_server.errors import ApiError

ACCEPTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def decode_prompt_embeds(data: object, hidden_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Turn one base64 ``torch.save`` payload into a ``[seq_len, hidden_size]`` tensor.

    Mirrors vLLM: base64 decode, ``torch.load(weights_only=True)`` on CPU, a dense
    floating tensor (float32/bfloat16/float16), 2-D (a 3-D tensor with a leading
    batch of 1 is squeezed), last dim == hidden size; then cast to ``dtype``.
    Anything else raises ``ApiError`` (400).
    """
    if not isinstance(data, str):
        raise ApiError("prompt_embeds must be a base64 string or a list of them", param="prompt_embeds")
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(f"prompt_embeds is not valid base64: {exc}", param="prompt_embeds") from None
    try:
        tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the client's
        raise ApiError(
            f"prompt_embeds could not be loaded as a tensor: {type(exc).__name__}", param="prompt_embeds"
        ) from None
    if not isinstance(tensor, torch.Tensor):
        raise ApiError("prompt_embeds must hold a single torch tensor", param="prompt_embeds")
    if tensor.layout != torch.strided:
        raise ApiError(f"prompt_embeds must be a dense tensor, got layout {tensor.layout}", param="prompt_embeds")
    if tensor.dtype not in ACCEPTED_DTYPES:
        raise ApiError(
            f"prompt_embeds dtype must be one of float32, bfloat16, float16, got {tensor.dtype}",
            param="prompt_embeds",
        )
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor.squeeze(0)
    if tensor.dim() != 2:
        raise ApiError(
            f"prompt_embeds must have shape [seq_len, hidden_size], got {list(tensor.shape)}",
            param="prompt_embeds",
        )
    if tensor.shape[-1] != hidden_size:
        raise ApiError(
            f"prompt_embeds hidden size {tensor.shape[-1]} does not match the model's {hidden_size}",
            param="prompt_embeds",
        )
    if tensor.shape[0] == 0:
        raise ApiError("prompt_embeds must hold at least one embedding", param="prompt_embeds")
    if not bool(torch.isfinite(tensor).all()):
        raise ApiError("prompt_embeds contains NaN or infinite values", param="prompt_embeds")
    return tensor.to(dtype).contiguous()
