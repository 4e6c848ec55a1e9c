"""bench/gpu_suite.sh on the CPU (--dry-run, tiny sizes): every step runs, writes its JSON, and the
summary carries the ratios and value checks, so the GPU run cannot break unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_suite_dry_run_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["failed_steps"] == [], {k: v.get("output_tail") for k, v in report["steps"].items()}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {"attacks", "fid", "perplexity", "perplexity_small_window", "energy", "generation",
            "variants"} <= set(report["steps"])
    summary = report["summary"]
    assert summary["fid equal"] is True and summary["perplexity equal"] is True
    assert summary["perplexity_small_window equal"] is True
    assert summary["generation outputs equal"] is True
    assert summary["pgd ours/bare"] > 0 and summary["pgd ours/bare min"] > 0
    assert summary["pgd values equal"] is True  # no random start: every contender computes the same attack
    assert summary["variants real-set passes"] == [1.0]
    # The GPU tests were collected and skipped here (no CUDA), not silently absent.
    assert report["gpu_tests"]["counts"]["tests"] >= 1
    assert report["gpu_tests"]["counts"]["skipped"] == report["gpu_tests"]["counts"]["tests"]


def test_the_gpu_suite_refuses_to_run_without_cuda_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
