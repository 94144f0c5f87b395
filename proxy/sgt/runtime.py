"""A loaded SGT, ready to turn prompts into obfuscated embeddings.

One ``SGTRuntime`` lives in each gunicorn worker and is shared by its threads;
a semaphore bounds how many transforms run at once so that a burst of
requests queues instead of oversubscribing the cores (or the GPU).
"""

from __future__ import annotations

import os
import queue
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from proxy.sgt.file import load_sgt_file
from proxy.sgt.prompt import PromptRenderer, RenderedPrompt
from proxy.sgt.transform import EstimatorConfig, FusedTransform, StainedGlassTransform


class Slots:
    """At most ``n`` holders at once: a context manager over a C-level queue of ``n`` tokens.

    Why not ``threading.BoundedSemaphore``: it is Python code around a
    condition variable, several times the cost of a queue's get and put on
    every request's path.
    """

    def __init__(self, n: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self._tokens.put(None)

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc: object) -> None:
        self._tokens.put(None)


class SGTRuntime:
    """Renderer, embedding table and transform of one SGT file."""

    def __init__(
        self, data: dict[str, Any], device: str = "cpu", max_concurrent: int = 4, noise_scale: float = 1.0
    ) -> None:
        tok = data["tokenizer"]
        self.renderer = PromptRenderer(tok["tokenizer_json"], tok["chat_template"], tok.get("special_tokens", {}))
        self.renders_tools = "tools" in tok["chat_template"]  # a template that never reads `tools` drops them
        self.model_info: dict[str, Any] = dict(data["model"])
        self.table: torch.Tensor = data["embedding"]  # mmap'd, shared between workers
        self.device = torch.device(device)
        module = StainedGlassTransform(EstimatorConfig(**data["estimator"]))
        module.load_state_dict(data["state_dict"])
        self.noise_scale = noise_scale  # SGP_NOISE_SCALE: sigma's multiplier, folded into the fused weights
        fused = FusedTransform(module.eval().requires_grad_(False), noise_scale=noise_scale)
        self.transform = fused.to(self.device)  # the module is dropped
        self._slots = Slots(max_concurrent)
        # The noise comes from this runtime's own generator, seeded from the OS: never from a request's
        # seed (the upstream sees that), and never the RNG state a forked gunicorn worker inherits
        # from the master, which would give every worker the same noise.
        self._noise = torch.Generator(device=self.device)
        self._noise.manual_seed(secrets.randbits(63))

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str = "cpu", max_concurrent: int = 4, noise_scale: float = 1.0
    ) -> SGTRuntime:
        return cls(load_sgt_file(path), device=device, max_concurrent=max_concurrent, noise_scale=noise_scale)

    @property
    def max_model_len(self) -> int:
        return int(self.model_info["max_model_len"])

    @property
    def hidden_size(self) -> int:
        return int(self.model_info["hidden_size"])

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the bounded transform slots."""
        with self._slots:
            yield

    def embed(self, prompt: RenderedPrompt) -> torch.Tensor:
        """Plain (not obfuscated) embedding rows of a prompt, on the CPU."""
        return self.table.index_select(0, prompt.ids)

    def obfuscate(self, prompt: RenderedPrompt, generator: torch.Generator | None = None) -> torch.Tensor:
        """Obfuscated embeddings: dense, contiguous, CPU, in the table's dtype."""
        # No inference_mode/no_grad: neither the table nor the fused weights require grad, so autograd
        # records nothing anyway, and entering the mode costs more than the transform's smallest op.
        with self._slots:
            rows = self.embed(prompt)
            mask = prompt.mask
            if self.device.type == "cpu":
                return self.transform(rows, mask, generator=generator or self._noise)  # dense, contiguous
            out = self.transform(
                rows.to(self.device, non_blocking=True),
                mask.to(self.device, non_blocking=True),
                generator=generator or self._noise,
            )
            # Page-locked host memory (reused by torch's caching host allocator): the copy back runs
            # at full PCIe speed instead of through a pageable bounce buffer (see docs/benchmarks.md).
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out)
            return host
