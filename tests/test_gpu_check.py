"""`python bench/gpu_check.py` on a machine without CUDA: it says what it skipped and exits 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine gpu_check runs for real")
def test_gpu_check_without_cuda_says_what_it_skipped_and_exits_0():
    before = (ROOT / "bench" / "results_gpu.json").exists()
    out = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no CUDA device" in out.stdout and "skipped: the tests marked gpu" in out.stdout
    assert "test_gpu.py" in out.stdout and "SKIPPED" in out.stdout  # collected, each reported as skipped
    assert (ROOT / "bench" / "results_gpu.json").exists() == before  # no GPU bench ran
