"""``python -m bench --quick`` end to end: every benchmark runs, writes its JSON, and counts no errors.

Timings are not asserted: CI machines are too noisy for that (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

EXPECTED = {
    "payload": {"variants", "floor", "raw_bytes", "b64_bytes"},
    "stages": {"cases", "torch_threads"},
    "overhead": {"cases"},
    "throughput": {"results", "direct"},
    "memory": {"one", "four", "file_mb", "extra_worker_pss_mb"},
}


def _run_module(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the repository root; fails the test with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(300)
def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    _run_module("bench", "--quick", "--out", str(out), timeout=280)
    summary = json.loads((out / "summary-cpu.json").read_text())
    assert set(summary["benchmarks"]) == set(EXPECTED)
    for name, keys in EXPECTED.items():
        entry = summary["benchmarks"][name]
        assert entry["ok"] and entry["errors"] == 0, (name, entry)
        result = json.loads((out / f"{name}-cpu.json").read_text())
        assert keys <= set(result), (name, keys - set(result))
    overhead = json.loads((out / "overhead-cpu.json").read_text())
    for case in overhead["cases"]:
        for mode in ("whole", "stream"):
            assert {"p50", "p95", "p99"} <= set(case[mode]["added_ms"]) and case[mode]["errors"] == 0
    assert list(out.glob("*.png")), "no plots drawn"


@pytest.mark.timeout(180)
def test_compare_with_a_git_ref(tmp_path: Path) -> None:
    """``python -m bench.compare HEAD``: both versions answer, the table and the JSON come out."""
    proc = _run_module("bench.compare", "HEAD", "--rounds", "3", "--out", str(tmp_path), timeout=170)
    result = json.loads((tmp_path / "compare-whole.json").read_text())
    assert result["ref"] == "HEAD" and result["rounds"] == 3
    assert result["added_ref_ms"]["n"] == result["added_here_ms"]["n"] == 3
    assert "here - ref p50" in proc.stdout
