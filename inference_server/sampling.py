"""Sampling parameters and the next-token choice (temperature, top-p/top-k, penalties).

Kept apart from the model loop so the rules match vLLM's in one readable place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

GREEDY_EPS = 1e-5  # vLLM treats temperature below this as greedy


@dataclass
class SamplingParams:
    """What a request asks of the sampler; validated by ``protocol.parse_completion_request``."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    ignore_eos: bool = False


def make_generator(seed: int | None) -> torch.Generator:
    """A per-request RNG: the same seed gives the same text, no seed gives fresh randomness."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Penalise tokens already generated (vLLM: output tokens only)."""
    if params.repetition_penalty != 1.0:
        seen = counts > 0
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if params.frequency_penalty:
        logits = logits - params.frequency_penalty * counts
    if params.presence_penalty:
        logits = logits - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_next(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Choose the next token id from 1-D float32 ``logits``."""
    logits = apply_penalties(logits, counts, params)
    if params.temperature < GREEDY_EPS:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > params.top_p  # keep the token crossing top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
