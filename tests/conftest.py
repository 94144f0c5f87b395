"""Session fixtures: a tiny model and SGT built offline, a real inference_server, a real gunicorn."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from inference_server.tiny_model import build_tiny_model
from sgt_tools.build import build_sgt
from tests.helpers import STAINEDGLASS_ON, TINY_NAME, start_tiny_upstream
from tests.procs import Service, start_inference_server, start_proxy
from tests.relay import RecordingRelay

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sgp")


@pytest.fixture(scope="session")
def tiny_model(workdir: Path) -> Path:
    return build_tiny_model(workdir / TINY_NAME)


@pytest.fixture(scope="session")
def tiny_sgt(tiny_model: Path, workdir: Path) -> Path:
    return build_sgt(tiny_model, workdir / "sgt_model.pt", width=32, noise_scale=0.3)


@pytest.fixture(scope="session")
def exact_sgt(tiny_model: Path, workdir: Path) -> Path:
    """An SGT that adds no noise: the proxy's answers must then equal the model's own."""
    return build_sgt(tiny_model, workdir / "sgt_exact.pt", width=32, noise_scale=0.0)


@pytest.fixture(scope="session")
def upstream(tiny_model: Path, workdir: Path) -> Iterator[Service]:
    service = start_tiny_upstream(tiny_model, workdir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def protected_upstream(tiny_model: Path, workdir: Path) -> Iterator[Service]:
    """The tiny model behind output protection (protocol v1)."""
    service = start_tiny_upstream(tiny_model, workdir, "--output-protection")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def relay(upstream: Service) -> Iterator[RecordingRelay]:
    """Records every byte the proxy sends upstream."""
    recorder = RecordingRelay(upstream.port)
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def launch_proxy(workdir: Path, tiny_sgt: Path) -> Iterator[Callable[..., Service]]:
    """Start extra proxies with other settings; all are stopped at the end of the session."""
    started: list[Service] = []

    def launch(host: str, workers: int = 1, **env: str) -> Service:
        full = {"SGP_SGT_PATH": str(tiny_sgt), "SGP_INFERENCE_SERVICE_HOST": host, "SGP_MAX_NEW_TOKENS": "12", **env}
        service = start_proxy(workdir, full, workers=workers)
        started.append(service)
        return service

    yield launch
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def proxy(launch_proxy: Callable[..., Service], relay: RecordingRelay) -> Service:
    """The main proxy, talking to the inference server through the recording relay (/v1/stainedglass on)."""
    return launch_proxy(relay.url, **STAINEDGLASS_ON)


@pytest.fixture(scope="session")
def exact_proxy(launch_proxy: Callable[..., Service], upstream: Service, exact_sgt: Path) -> Service:
    return launch_proxy(upstream.url, SGP_SGT_PATH=str(exact_sgt), **STAINEDGLASS_ON)


@pytest.fixture(scope="session")
def client(proxy: Service) -> OpenAI:
    return OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def null_upstream(workdir: Path) -> Iterator[Service]:
    """inference_server in null mode (hidden 64, like the tiny SGT): checks embeddings, answers 8 fixed tokens."""
    service = start_inference_server(
        workdir, "--null-tokens", "8", "--hidden-size", "64", "--served-model-name", "null"
    )
    yield service
    service.stop()
