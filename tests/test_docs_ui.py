"""/docs in a real browser: headless Chromium runs the Swagger UI's JavaScript and lists the operations.

Skips when Chromium is not installed (.ci/run installs Debian's chromium).
The screenshot is kept in the test's tmp directory for a person to look at.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]
OPERATIONS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/livez", "/readyz", "/metrics")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docs_page_lists_the_operations(proxy, tmp_path: Path) -> None:
    dom = run_chromium(tmp_path, "--dump-dom", proxy.url + "/docs")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "swagger-ui" in html
    assert "opblock" in html, "the Swagger UI did not render the operations (its JavaScript did not run?)"
    for path in OPERATIONS:
        assert f">{path}<" in html or f'data-path="{path}"' in html, f"{path} is not listed on /docs"
    assert "Stained Glass Transform Proxy" in html


def test_docs_screenshot(proxy, tmp_path: Path) -> None:
    shot = tmp_path / "docs.png"
    result = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", proxy.url + "/docs")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
