"""A gunicorn worker's peak RSS for one completions request of 64 long prompts (issue #16).

Usage: .venv/bin/python scripts/prompt_list_memory.py [SGT file, default .demo/sgt_model.pt]

Starts a null-mode inference_server (hidden size from the SGT) and the proxy
under gunicorn (1 worker), sends 64 prompts of ~2,400 tokens each (424 KB of
JSON; SGP_MAX_BATCH_TOKENS raised so it is served), and prints the worker's
VmHWM before and after. Everything runs on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.sgt.file import load_sgt_file  # noqa: E402
from tests.procs import start_inference_server, start_proxy  # noqa: E402


def peak_rss_mib(pids: list[str]) -> int:
    peaks = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                peaks.append(int(line.split()[1]))
    return max(peaks) // 1024


def main() -> None:
    sgt = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".demo" / "sgt_model.pt").resolve()
    hidden = int(load_sgt_file(sgt)["model"]["hidden_size"])
    logs = Path(tempfile.mkdtemp(prefix="sgp-memory-"))
    upstream = start_inference_server(
        logs, "--null-tokens", "2", "--hidden-size", str(hidden), "--served-model-name", "null"
    )
    env = {
        "SGP_SGT_PATH": str(sgt),
        "SGP_INFERENCE_SERVICE_HOST": upstream.url,
        "SGP_UPSTREAM_MODEL": "null",
        "SGP_MAX_BATCH_TOKENS": "1000000",
        "GUNICORN_ACCESSLOG": "",
    }
    proxy = start_proxy(logs, env, workers=1)
    try:
        workers = subprocess.run(["pgrep", "-P", str(proxy.proc.pid)], capture_output=True, text=True).stdout.split()
        prompts = ["lorem ipsum dolor sit amet consectetur " * 170] * 64
        warm = {"model": "m", "prompt": "warm up", "max_tokens": 2}
        requests.post(proxy.url + "/v1/completions", json=warm, timeout=60).raise_for_status()
        before = peak_rss_mib(workers)
        started = time.monotonic()
        body = {"model": "m", "prompt": prompts, "max_tokens": 2}
        response = requests.post(proxy.url + "/v1/completions", json=body, timeout=600)
        print(
            f"status {response.status_code}, request {len(json.dumps(body))} bytes, "
            f"{time.monotonic() - started:.1f} s; worker peak RSS {before} MiB -> {peak_rss_mib(workers)} MiB"
        )
    finally:
        proxy.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
