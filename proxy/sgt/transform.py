"""The Stained Glass Transform: ``X~ = X + mask * (mu(X) + sigma(X) * eps)``.

``mu`` and ``sigma`` are small sequence-level networks ("estimators") that see
each embedding row together with its neighbours. Untrained, ``mu`` is zero and
``sigma`` is a calibrated constant (a multiple of the table's per-dimension
standard deviation), so a freshly built SGT is plain Gaussian noise; training
(``python -m sgt_tools train``) is what makes it private.
"""

from __future__ import annotations

import math
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
    # A floor under sigma, as a multiple of the table's per-dimension std: sigma = floor + exp(...).
    # Training cannot collapse the noise below it (an SGT whose noise collapsed is a fixed codebook:
    # the same content gives the same rows in every request). 0 (older files): no floor.
    min_sigma: float = 0.0

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
        self.sigma_floor: torch.Tensor | None
        if config.min_sigma > 0:  # a buffer, so that it travels in the state dict (files without it load as before)
            self.register_buffer("sigma_floor", table_std.float() * config.min_sigma)
        else:
            self.sigma_floor = None
        self.noise_multiplier = 1.0  # not saved: the evaluation's stand-in for SGP_NOISE_SCALE

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(self.log_sigma_base + self.std(x))
        return sigma if self.sigma_floor is None else sigma + self.sigma_floor

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
        return self.parts(x, mask, generator)[0]

    def parts(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed rows and sigma (training reads sigma: its floor and entropy terms)."""
        xf = x.float()
        eps = torch.randn(xf.shape, generator=generator, device=xf.device, dtype=xf.dtype)
        sigma = self.sigma(xf)
        noise = self.mu(xf) + (sigma if self.noise_multiplier == 1.0 else sigma * self.noise_multiplier) * eps
        out = xf + mask.to(xf.dtype).unsqueeze(-1) * noise
        return out.to(x.dtype), sigma


class FusedTransform:
    """The same transform for serving: mean and std estimators computed side by side, a third of the ops.

    Why: a 30-token prompt's transform is a few microseconds of arithmetic and
    ~30 torch calls of 10-20 microseconds each on a 2-core CPU. Here the two
    input projections are one matrix product, the two convolutions one
    batched product over the unfolded sequence and the two output projections
    another; the noise is drawn from the same generator in the same shape, so
    the result equals the module's up to float rounding. Inference only (the
    weights are copies): training uses :class:`StainedGlassTransform`.
    """

    def __init__(self, transform: StainedGlassTransform, noise_scale: float = 1.0) -> None:
        """``noise_scale`` multiplies sigma (floor included): the serving knob ``SGP_NOISE_SCALE``.

        It costs nothing per request: ``log(noise_scale)`` is folded into the std output bias.
        0 turns the noise off (mu alone), values above 1 trade utility for privacy (docs/sgt.md).
        """
        if noise_scale < 0 or not math.isfinite(noise_scale):
            raise ValueError(f"noise_scale must be a finite number >= 0, not {noise_scale}")
        mean, std = transform.mean, transform.std
        width, kernel = transform.config.width, transform.config.kernel_size
        self.padding = kernel // 2
        self.kernel = kernel
        self.in_weight = torch.cat([mean.inp.weight, std.inp.weight]).t().contiguous()  # [hidden, 2w]
        self.in_bias = torch.cat([_bias(mean.inp), _bias(std.inp)])
        # conv weight [out, in, k] -> [in * k, out], the layout of the sequence unfolded into [seq, in, k]
        self.mix_weight = torch.stack([e.mix.weight.reshape(width, width * kernel).t() for e in (mean, std)])
        self.mix_bias = torch.stack([_bias(mean.mix), _bias(std.mix)]).unsqueeze(1)  # [2, 1, w]
        self.out_weight = torch.stack([mean.out.weight.t(), std.out.weight.t()])  # [2, w, hidden]
        # the base noise level folded into the std estimator's output bias: sigma = exp(out[1])
        log_scale = math.log(noise_scale) if noise_scale > 0 else -math.inf
        log_sigma_bias = std.out.bias + transform.log_sigma_base + log_scale
        self.out_bias = torch.stack([mean.out.bias, log_sigma_bias]).unsqueeze(1)  # [2, 1, hidden]
        self.skip_weight = transform.skip.weight.t().contiguous() if transform.skip is not None else None
        floor = transform.sigma_floor
        self.sigma_floor = None if floor is None or noise_scale == 0 else (floor * noise_scale).contiguous()
        self.width = width

    def to(self, device: torch.device) -> FusedTransform:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Obfuscate the rows of ``x`` ([seq, hidden]) where ``mask`` ([seq] bool) is set."""
        xf = x if x.dtype == torch.float32 else x.float()  # each torch call counts at this size: none for nothing
        eps = torch.randn(xf.shape, generator=generator, device=xf.device, dtype=xf.dtype)
        seq = xf.shape[0]
        h = nn.functional.gelu(torch.addmm(self.in_bias, xf, self.in_weight))  # [seq, 2w]
        padded = nn.functional.pad(h, (0, 0, self.padding, self.padding))  # [seq + k - 1, 2w]
        windows = padded.unfold(0, self.kernel, 1).reshape(seq, 2, self.width * self.kernel).transpose(0, 1)
        h = nn.functional.gelu(torch.baddbmm(self.mix_bias, windows, self.mix_weight))  # [2, seq, w]
        mu, log_sigma = torch.baddbmm(self.out_bias, h, self.out_weight).unbind(0)  # [seq, hidden] each
        if self.skip_weight is not None:
            mu = torch.addmm(mu, xf, self.skip_weight)
        sigma = log_sigma.exp_()
        if self.sigma_floor is not None:
            sigma = sigma.add_(self.sigma_floor)
        noise = torch.addcmul(mu, sigma, eps)
        out = torch.addcmul(xf, mask.unsqueeze(-1), noise)  # the bool mask multiplies as 0/1
        return out if out.dtype == x.dtype else out.to(x.dtype)


def _bias(layer: nn.Module) -> torch.Tensor:
    """A layer's bias (the estimators' layers always have one)."""
    bias = layer.bias
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"{type(layer).__name__} has no bias")
    return bias
