"""Real processes for tests and benchmarks: free ports, start, wait, stop, read logs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [a.replace("{port}", str(self.port)) for a in argv],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_http(self, path: str, timeout: float = 90) -> Service:
        """Poll ``path`` until it answers (any status below 500) or the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.url + path, timeout=1).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {path} in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        self._log.close()


def start_inference_server(log_dir: Path, *args: str, env: dict[str, str] | None = None) -> Service:
    argv = [sys.executable, "-m", "inference_server", "--host", "127.0.0.1", "--port", "{port}", *args]
    return Service("inference_server", argv, log_dir, env=env).wait_http("/v1/models")


def start_proxy(
    log_dir: Path, env: dict[str, str], workers: int = 1, threads: int = 16, extra: tuple[str, ...] = ()
) -> Service:
    """The proxy under a real gunicorn with the project's gunicorn.conf.py."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "-b",
        "127.0.0.1:{port}",
        "-w",
        str(workers),
        "--threads",
        str(threads),
        *extra,
        "wsgi:app",
    ]
    return Service("proxy", argv, log_dir, env=env).wait_http("/livez")


def scrape_metrics(url: str, until: Callable[[str], bool], timeout: float = 5.0) -> str:
    """The text of ``url`` (a /metrics endpoint) once ``until`` holds for it, else the last text after ``timeout``.

    A request's metric updates are applied just after its answer is sent, so a scrape made the moment
    the answer arrives can miss them.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(url, timeout=10).text
        if until(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)
