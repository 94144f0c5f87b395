"""The serving knob ``SGP_NOISE_SCALE`` and the sigma floor: the same numbers as the module, the same wire."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proxy.settings import Settings, SettingsError
from proxy.sgt import SGTRuntime, load_sgt_file
from proxy.sgt.transform import EstimatorConfig, FusedTransform, StainedGlassTransform


def _trained_looking(config: EstimatorConfig) -> StainedGlassTransform:
    module = StainedGlassTransform(config, table_std=torch.rand(config.hidden_size) + 0.1)
    with torch.no_grad():  # the zero-initialised outputs would hide mistakes
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return module.eval().requires_grad_(False)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("min_sigma", [0.0, 0.4])
def test_fused_noise_scale_equals_the_module_with_its_multiplier(scale: float, min_sigma: float) -> None:
    module = _trained_looking(EstimatorConfig(hidden_size=48, width=24, linear_skip=True, min_sigma=min_sigma))
    fused = FusedTransform(module, noise_scale=scale)
    module.noise_multiplier = scale
    x, mask = torch.randn(19, 48), torch.rand(19) > 0.3
    with torch.inference_mode():
        expected = module(x, mask, generator=torch.Generator().manual_seed(3))
        got = fused(x, mask, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_noise_scale_moves_rows_as_expected() -> None:
    """0: the rows are x + mu, the same every time; k: the spread around x + mu grows k-fold."""
    module = _trained_looking(EstimatorConfig(hidden_size=64, width=32, min_sigma=0.3))
    x, mask = torch.randn(200, 64), torch.ones(200, dtype=torch.bool)
    centre = FusedTransform(module, noise_scale=0.0)(x, mask)
    assert torch.equal(centre, FusedTransform(module, noise_scale=0.0)(x, mask))  # no noise at all
    spread = {}
    for scale in (1.0, 4.0):
        out = FusedTransform(module, noise_scale=scale)(x, mask, generator=torch.Generator().manual_seed(1))
        spread[scale] = float((out - centre).norm(dim=-1).mean())
    assert spread[4.0] == pytest.approx(4 * spread[1.0], rel=1e-4)
    with pytest.raises(ValueError, match="noise_scale"):
        FusedTransform(module, noise_scale=-1.0)


def test_setting_is_validated_and_names_the_variable() -> None:
    assert Settings.from_env({}).noise_scale == 1.0
    assert Settings.from_env({"SGP_NOISE_SCALE": "2.5"}).noise_scale == 2.5
    for bad in ("-0.1", "nan", "inf", "loud", "1000"):
        with pytest.raises(SettingsError, match="SGP_NOISE_SCALE"):
            Settings.from_env({"SGP_NOISE_SCALE": bad})


def test_runtime_wire_format_does_not_change_with_the_scale(tiny_sgt: Path) -> None:
    data = load_sgt_file(tiny_sgt)
    quiet, loud = SGTRuntime(data, noise_scale=0.0), SGTRuntime(data, noise_scale=5.0)
    prompt = quiet.renderer.render_chat([{"role": "user", "content": "the account number is 123456"}])
    a, b = quiet.obfuscate(prompt), loud.obfuscate(prompt)
    assert a.shape == b.shape == (len(prompt), quiet.hidden_size)
    assert a.dtype == b.dtype == quiet.table.dtype and a.is_contiguous() and b.is_contiguous()
    clean = quiet.embed(prompt).float()
    assert torch.equal(a.float(), clean)  # an untrained SGT at scale 0: mu = 0 and no noise
    assert torch.equal(b[~prompt.mask], clean[~prompt.mask].to(b.dtype))  # the template's tokens stay plain
    assert float((b.float() - clean)[prompt.mask].norm(dim=-1).mean()) > 0.5 * float(clean.norm(dim=-1).mean())


def test_folding_the_scale_into_the_weights_equals_the_knob() -> None:
    from sgt_tools.weights import fold_noise_scale

    module = _trained_looking(EstimatorConfig(hidden_size=32, width=16, min_sigma=0.5))
    data = {"estimator": module.config.to_dict(), "state_dict": module.state_dict(), "training": {"trained": True}}
    folded = fold_noise_scale(data, 0.75)
    again = StainedGlassTransform(EstimatorConfig(**folded["estimator"]))
    again.load_state_dict(folded["state_dict"])
    assert folded["training"]["noise_scale_folded"] == 0.75 and folded["estimator"]["min_sigma"] == 0.375
    x, mask = torch.randn(11, 32), torch.ones(11, dtype=torch.bool)
    with torch.inference_mode():
        expected = FusedTransform(module, noise_scale=0.75)(x, mask, generator=torch.Generator().manual_seed(5))
        got = FusedTransform(again.eval())(x, mask, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_app_serves_with_the_configured_scale(tiny_sgt: Path) -> None:
    """SGP_NOISE_SCALE reaches the worker's runtime: at 0 an untrained SGT sends the plain rows."""
    from proxy.app import build_app

    for scale in (0.0, 3.0):
        app = build_app(
            Settings(sgt_path=str(tiny_sgt), inference_service_host="http://127.0.0.1:9", noise_scale=scale)
        )
        runtime = app.extensions["sgp.service"].sgt
        assert runtime.noise_scale == scale
        prompt = runtime.renderer.render_chat([{"role": "user", "content": "hello there"}])
        moved = bool((runtime.obfuscate(prompt).float() != runtime.embed(prompt).float()).any())
        assert moved is (scale > 0)
