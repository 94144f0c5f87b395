"""GET /metrics under two gunicorn workers: every worker's counts add up, whichever worker answers the scrape."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TINY_NAME, start_tiny_upstream
from tests.procs import Service, start_proxy

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "count the sheep"}]


@pytest.fixture(scope="module")
def doomed_upstream(tiny_model: Path, workdir: Path) -> Iterator[Service]:
    """This module's own protected upstream: the last test stops it."""
    service = start_tiny_upstream(tiny_model, workdir, "--output-protection")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def two_workers(workdir: Path, tiny_sgt: Path, doomed_upstream: Service, metrics_dir: Path) -> Iterator[Service]:
    env = {
        "SGP_SGT_PATH": str(tiny_sgt),
        "SGP_INFERENCE_SERVICE_HOST": doomed_upstream.url,
        "SGP_UPSTREAM_MODEL": TINY_NAME,
        "SGP_MAX_NEW_TOKENS": "6",
        "SGP_OUTPUT_DECRYPTION": "True",
        "SGP_EPHEMERAL_KEY_REFRESH_TIME_SECONDS": "0.5",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    service = start_proxy(workdir, env, workers=2, threads=4)
    yield service
    service.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by (name, sorted labels), on a fresh connection so that either worker may answer."""
    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def per_worker_requests(metrics_dir: Path, tmp: Path, endpoint: str) -> dict[str, float]:
    """Requests each worker counted, read from its own file in the multiprocess directory."""
    out: dict[str, float] = {}
    for db in sorted(metrics_dir.glob("counter_*.db")):
        alone = tmp / db.stem
        alone.mkdir(exist_ok=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        total = sum(
            s.value
            for family in registry.collect()
            for s in family.samples
            if s.name == "sgp_requests_total" and s.labels.get("endpoint") == endpoint
        )
        out[db.stem.split("_")[-1]] = total
    return out


def text_tokens(response: requests.Response) -> tuple[int, bool]:
    """Tokens the proxy should count for this answer, and whether a stream carried any text."""
    if not response.headers["Content-Type"].startswith("text/event-stream"):
        return response.json()["usage"]["completion_tokens"], False
    with_text = 0
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        for choice in json.loads(line[6:]).get("choices", []):
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                with_text += 1
                break
    return with_text, with_text > 0


def one_request(url: str, index: int) -> requests.Response:
    """A chat or completion, whole or streamed, on its own connection."""
    streamed = index % 2 == 1
    if index % 4 < 2:
        body: dict = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": streamed}
        path = CHAT
    else:
        body = {"model": "m", "prompt": "the sheep", "max_tokens": 4, "stream": streamed}
        path = COMPLETIONS
    response = requests.post(url + path, json=body, timeout=60, headers={"Connection": "close"}, stream=streamed)
    response.content  # noqa: B018 - read the whole stream
    return response


def test_counts_add_up_across_workers(two_workers: Service, metrics_dir: Path, tmp_path: Path) -> None:
    sent, tokens, first_tokens = 0, {CHAT: 0, COMPLETIONS: 0}, 0
    for _ in range(10):  # until both workers have served chats (the kernel picks the worker)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: one_request(two_workers.url, i), range(8)))
        assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
        sent += 8
        for answer in answers:
            count, had_text = text_tokens(answer)
            tokens[CHAT if "chat" in answer.url else COMPLETIONS] += count
            first_tokens += had_text
        workers = per_worker_requests(metrics_dir, tmp_path, CHAT)
        if sum(1 for count in workers.values() if count > 0) >= 2:
            break
    assert sum(1 for count in per_worker_requests(metrics_dir, tmp_path, CHAT).values() if count > 0) >= 2
    for _ in range(3):
        assert requests.post(two_workers.url + CHAT, data=b"{nope", timeout=10, headers=JSON).status_code == 400

    chats = completions = sent // 2
    for _ in range(6):  # several scrapes: whichever worker answers, the sums are the same
        samples = scrape(two_workers.url)
        assert value(samples, "sgp_requests_total", endpoint=CHAT, method="POST", status="200") == chats
        assert value(samples, "sgp_requests_total", endpoint=COMPLETIONS, method="POST", status="200") == completions
        assert value(samples, "sgp_requests_total", endpoint=CHAT, method="POST", status="400") == 3
        assert value(samples, "sgp_request_duration_seconds_count", endpoint=CHAT) == chats + 3
        assert value(samples, "sgp_transform_duration_seconds_count", endpoint=CHAT) == chats
        assert value(samples, "sgp_upstream_response_seconds_count", endpoint=COMPLETIONS) == completions
        ttft = value(samples, "sgp_time_to_first_token_seconds_count", endpoint=CHAT)
        ttft += value(samples, "sgp_time_to_first_token_seconds_count", endpoint=COMPLETIONS)
        assert ttft == first_tokens  # streams with text; whole answers have no TTFT
        assert value(samples, "sgp_stream_chunks_total", endpoint=CHAT) >= chats // 2
        assert value(samples, "sgp_completion_tokens_total", endpoint=CHAT) == tokens[CHAT]
        assert value(samples, "sgp_completion_tokens_total", endpoint=COMPLETIONS) == tokens[COMPLETIONS]
        assert value(samples, "sgp_upstream_errors_total", endpoint=CHAT, reason="unreachable") == 0


def test_key_refreshes_counted_in_every_worker(two_workers: Service) -> None:
    time.sleep(1.2)  # both workers refresh every 0.5 s
    assert value(scrape(two_workers.url), "sgp_output_protection_key_refreshes_total") >= 4


def test_upstream_errors_counted(two_workers: Service, doomed_upstream: Service) -> None:
    doomed_upstream.stop()  # the inference service goes away (this module's last use of it)
    for _ in range(2):
        response = requests.post(
            two_workers.url + CHAT, json={"model": "m", "messages": MESSAGES, "max_tokens": 2}, timeout=30
        )
        assert response.status_code == 502, response.text
    # a request's metric updates are applied just after its answer is sent: give the worker a moment
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(two_workers.url)
        errors = value(samples, "sgp_upstream_errors_total", endpoint=CHAT, reason="unreachable")
        answered = value(samples, "sgp_requests_total", endpoint=CHAT, method="POST", status="502")
        if (errors, answered) == (2, 2) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (errors, answered) == (2, 2)


def test_metrics_in_openapi(two_workers: Service) -> None:
    assert "/metrics" in requests.get(two_workers.url + "/openapi.json", timeout=10).json()["paths"]


def test_a_requests_metric_updates_wait_until_its_answer_is_sent() -> None:
    """Inside a request, updates are applied once the answer is out; outside one, at once."""
    from prometheus_client import REGISTRY

    from proxy import metrics

    def transforms() -> float:
        return REGISTRY.get_sample_value("sgp_transform_duration_seconds_count", {"endpoint": "/v1/completions"}) or 0

    start = transforms()
    metrics.begin_request()
    with metrics.transform("completion"):
        pass
    assert transforms() == start  # waiting
    metrics.apply_deferred()
    assert transforms() == start + 1
    with metrics.transform("completion"):
        pass
    assert transforms() == start + 2  # no request open: applied at once
    metrics.begin_request()
    with metrics.transform("completion"):
        pass
    metrics.begin_request()  # a request that never finished: its updates are applied, not lost
    assert transforms() == start + 3
    metrics.apply_deferred()
