"""``make soak`` smoke-run: a short, small soak must lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT


def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--clients", "8", "--duration", "4", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["lost"] == 0 and report["error"] == 0
    assert report["ok"] == report["requests"] > 8
