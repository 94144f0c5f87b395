"""The Stained Glass Transform: ``X~ = X + mask * (mu(X) + sigma(X) * eps)``.

``mu`` and ``sigma`` are small sequence-level networks ("estimators") that see
each embedding row together with its neighbours. Untrained, ``mu`` is zero and
``sigma`` is a calibrated constant (a multiple of the table's per-dimension
standard deviation), so a freshly built SGT is plain Gaussian noise; training
(``python -m proxy.sgt train``) is what makes it private.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EstimatorConfig:
    """Shape of the mean and std estimators (plain data: it goes into the SGT file)."""

    hidden_size: int
    width: int = 256
    kernel_size: int = 3
    noise_scale: float = 0.3
    # A full-rank linear path in the mean estimator (zero-initialised): lets mu move a row
    # anywhere, e.g. rotate it off its own direction, which the rank-``width`` MLP cannot.
    linear_skip: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class SequenceEstimator(nn.Module):
    """Per-token MLP with a 1-D convolution over the sequence, zero-initialised output.

    The convolution is what makes the estimate depend on the neighbouring
    tokens, not only on the token itself.
    """

    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(config.hidden_size, config.width)
        self.mix = nn.Conv1d(config.width, config.width, config.kernel_size, padding=config.kernel_size // 2)
        self.out = nn.Linear(config.width, config.hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [seq, hidden] or [batch, seq, hidden]
        h = nn.functional.gelu(self.inp(x))
        hb = h.unsqueeze(0) if h.dim() == 2 else h
        hb = nn.functional.gelu(self.mix(hb.transpose(1, 2)).transpose(1, 2))
        return self.out(hb if x.dim() == 3 else hb[0])


class StainedGlassTransform(nn.Module):
    """Mean and std estimators plus the calibrated base noise level."""

    def __init__(self, config: EstimatorConfig, table_std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.mean = SequenceEstimator(config)
        self.skip = nn.Linear(config.hidden_size, config.hidden_size, bias=False) if config.linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
        self.std = SequenceEstimator(config)
        if table_std is None:
            table_std = torch.ones(config.hidden_size)
        base = torch.log((table_std.float() * config.noise_scale).clamp_min(1e-30))  # scale 0: no noise
        self.log_sigma_base = nn.Parameter(base)

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_sigma_base + self.std(x))

    def mu(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mean(x)
        return out if self.skip is None else out + self.skip(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Obfuscate the rows of ``x`` ([(batch,) seq, hidden]) where ``mask`` ([(batch,) seq] bool) is set."""
        xf = x.float()
        eps = torch.randn(xf.shape, generator=generator, device=xf.device, dtype=xf.dtype)
        noise = self.mu(xf) + self.sigma(xf) * eps
        out = xf + mask.to(xf.dtype).unsqueeze(-1) * noise
        return out.to(x.dtype)
