"""The hand-written parts of the hot path agree with the general code they replace.

``proxy.tensor_archive`` must write what ``torch.save`` writes; the fused
serving transform must compute what the trained module computes; the one-pass
content mask must mask what checking every span masks.
"""

from __future__ import annotations

import io
import random

import pytest
import torch

from inference_server.embeds import decode_prompt_embeds
from proxy.sgt.prompt import _content_mask
from proxy.sgt.transform import EstimatorConfig, FusedTransform, StainedGlassTransform
from proxy.tensor_archive import tensor_archive, torch_save_archive
from proxy.upstream import PromptEmbeds, encode_prompt_embeds

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.bool, torch.uint8]
SHAPES = [(1, 1), (3, 4), (35, 64), (2048, 96), (7,), (5, 3, 2)]


def _without_id(archive: bytes) -> bytes:
    """The archive with its serialization id (random by design) blanked."""
    name = archive.index(b"archive/.data/serialization_id")
    end = archive.index(b"PK\x07\x08", name)
    assert end - name > 40
    return archive[: end - 40] + b"0" * 40 + archive[end:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_archive_is_torch_saves_bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = (torch.randn(shape) * 8).to(dtype)
    ours = b"".join(bytes(piece) for piece in tensor_archive(tensor))
    assert _without_id(ours) == _without_id(torch_save_archive(tensor))
    loaded = torch.load(io.BytesIO(ours), weights_only=True)
    assert loaded.dtype == dtype and torch.equal(loaded, tensor)


def test_archive_references_the_tensor_bytes_and_varies_only_its_id() -> None:
    tensor = torch.randn(20, 16)
    first, second = tensor_archive(tensor), tensor_archive(tensor)
    data = [p for p in first if isinstance(p, memoryview)]
    assert len(data) == 1 and data[0].nbytes == tensor.nbytes
    tensor[0, 0] = 123.0  # the archive sees the tensor's memory, not a copy
    assert torch.load(io.BytesIO(b"".join(bytes(p) for p in first)), weights_only=True)[0, 0] == 123.0
    assert b"".join(map(bytes, first)) != b"".join(map(bytes, second))  # a fresh id each time
    assert _without_id(b"".join(map(bytes, first))) == _without_id(b"".join(map(bytes, second)))


@pytest.mark.parametrize("tensor", [torch.zeros(0, 8), torch.randn(8, 4).t(), torch.tensor(3.0)])
def test_what_the_writer_does_not_cover_goes_through_torch_save(tensor: torch.Tensor) -> None:
    ours = b"".join(bytes(piece) for piece in tensor_archive(tensor))
    assert torch.equal(torch.load(io.BytesIO(ours), weights_only=True), tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prompt_embeds_decode_as_vllm_decodes_them(dtype: torch.dtype) -> None:
    tensor = torch.randn(300, 48).to(dtype)
    decoded = decode_prompt_embeds(encode_prompt_embeds(tensor), 48, dtype)
    assert torch.equal(decoded, tensor)
    assert PromptEmbeds(tensor).b64_len == len(encode_prompt_embeds(tensor))


@pytest.mark.parametrize(
    "config",
    [
        EstimatorConfig(hidden_size=64, width=32),
        EstimatorConfig(hidden_size=48, width=24, kernel_size=5, linear_skip=True),
        EstimatorConfig(hidden_size=32, width=16, kernel_size=1),
    ],
)
@pytest.mark.parametrize("seq", [1, 2, 37])
def test_fused_transform_equals_the_module(config: EstimatorConfig, seq: int) -> None:
    module = StainedGlassTransform(config, table_std=torch.rand(config.hidden_size) + 0.1)
    with torch.no_grad():  # trained-looking weights: the zero-initialised outputs would hide mistakes
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    module.eval().requires_grad_(False)
    fused = FusedTransform(module)
    x = torch.randn(seq, config.hidden_size).to(torch.bfloat16)
    mask = torch.rand(seq) > 0.3
    with torch.inference_mode():
        expected = module(x, mask, generator=torch.Generator().manual_seed(7))
        got = fused(x, mask, generator=torch.Generator().manual_seed(7))
    assert got.dtype == x.dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)  # bf16 output
    assert torch.equal(got[~mask], x[~mask])
    assert not torch.equal(got[mask], x[mask]) or not mask.any()


def _mask_by_every_span(ids, offsets, spans, special) -> bytearray:
    pairs = zip(ids, offsets, strict=True)
    return bytearray(i not in special and any(start < e and end > s for s, e in spans) for i, (start, end) in pairs)


def test_one_pass_content_mask_equals_checking_every_span() -> None:
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 40)
        cuts = sorted(rng.randint(0, 120) for _ in range(n + 1))
        offsets = [(cuts[i], cuts[i + 1]) for i in range(n)]  # monotone, some zero-width
        ids = [rng.randint(0, 9) for _ in range(n)]
        points = sorted(rng.sample(range(0, 130), 2 * rng.randint(0, 4)))
        spans = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
        special = frozenset({0, 1})
        assert _content_mask(ids, offsets, spans, special) == _mask_by_every_span(ids, offsets, spans, special)
    backwards = [(5, 9), (0, 4), (10, 12)]  # never seen from a tokenizer, but must stay safe
    assert _content_mask([5, 6, 7], backwards, [(0, 4)], frozenset()) == bytearray([0, 1, 0])
