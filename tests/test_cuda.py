"""SGP_DEVICE=cuda: the transform on the GPU and a request through a proxy that uses it.

Skipped where there is no GPU (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from inference_server.embeds import decode_prompt_embeds
from proxy.sgt import SGTRuntime
from proxy.upstream import encode_prompt_embeds
from tests.procs import Service, start_inference_server, start_proxy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MESSAGES = [{"role": "user", "content": "Say something about glass."}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Own fixtures (not conftest's), so a GPU machine can run this file alone with ``--noconftest``."""
    return tmp_path_factory.mktemp("cuda")


@pytest.fixture(scope="module")
def tiny_sgt(workdir: Path) -> Path:
    from inference_server.tiny_model import build_tiny_model
    from sgt_tools.build import build_sgt

    return build_sgt(build_tiny_model(workdir / "tiny-llama"), workdir / "sgt_model.pt", width=32, noise_scale=0.3)


def test_transform_on_cuda_gives_pinned_cpu_embeddings(tiny_sgt: Path) -> None:
    cpu = SGTRuntime.load(tiny_sgt)
    gpu = SGTRuntime.load(tiny_sgt, device="cuda")
    prompt = gpu.renderer.render_chat(MESSAGES)
    out = gpu.obfuscate(prompt)
    assert out.device.type == "cpu" and out.is_pinned() and out.is_contiguous()
    assert out.shape == (len(prompt), gpu.hidden_size) and out.dtype == cpu.table.dtype
    plain = cpu.embed(prompt).float()
    assert torch.isfinite(out).all() and not torch.equal(out.float(), plain)  # noise was added
    decoded = decode_prompt_embeds(encode_prompt_embeds(out), gpu.hidden_size, out.dtype)
    assert torch.equal(decoded, out)


@pytest.fixture(scope="module")
def null_upstream(workdir: Path) -> Iterator[Service]:
    service = start_inference_server(workdir, "--null-tokens", "8", "--hidden-size", "64")
    yield service
    service.stop()


def test_proxy_request_with_cuda_transform(workdir: Path, tiny_sgt: Path, null_upstream: Service) -> None:
    env = {"SGP_SGT_PATH": str(tiny_sgt), "SGP_INFERENCE_SERVICE_HOST": null_upstream.url, "SGP_DEVICE": "cuda"}
    proxy = start_proxy(workdir, env)
    try:
        for stream in (False, True):
            body = {"model": "m", "messages": MESSAGES, "max_tokens": 8, "stream": stream}
            resp = requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
            assert resp.status_code == 200, resp.text
            if stream:
                assert resp.text.rstrip().endswith("data: [DONE]") and '"error"' not in resp.text
            else:
                assert resp.json()["choices"][0]["message"]["content"] == " tok" * 8
    finally:
        proxy.stop()
