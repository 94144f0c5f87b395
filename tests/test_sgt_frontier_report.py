"""The published frontier: the report rebuilds the docs' table and PNG from the committed eval JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "docs" / "sgt-results" / "frontier"
SHIPPED = "sr05 noise x0.75"


def test_report_rebuilds_the_published_points(tmp_path: Path) -> None:
    work = tmp_path / "frontier"
    shutil.copytree(FRONTIER, work)
    (work / "points.json").unlink()
    png = tmp_path / "frontier.png"
    cmd = [sys.executable, str(ROOT / "scripts" / "sgt_frontier.py"), "report", "--dir", str(work), "--png", str(png)]
    out = subprocess.run([*cmd, "--ship", SHIPPED], capture_output=True, text=True, check=True, timeout=120).stdout
    points = json.loads((work / "points.json").read_text())
    assert points == json.loads((FRONTIER / "points.json").read_text())  # the committed table is what the JSON says
    assert png.stat().st_size > 20_000
    assert f"| {SHIPPED} (shipped) | 91.6 | 42.2 | 55.7 |" in out
    shipped, old = points[SHIPPED], points["previous-demo"]
    assert shipped["qa"] >= 0.9 and shipped["combined"] < old["combined"] and shipped["echo_facts"] < old["echo_facts"]
    # the README's and the threat model's headline numbers
    readme = (ROOT / "README.md").read_text()
    assert (
        "| **served by `make demo`** (`SGP_NOISE_SCALE=1`) | **91.6** | 42.2 | **55.7%** | 82.6% | 99.8% | 5.6% |"
        in readme
    )
