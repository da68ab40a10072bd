"""The one command a machine with a CUDA GPU runs (a few minutes): the tests marked ``gpu`` (a training
resumed on CUDA, Ray Train with a GPU worker and its resume, data generation on the device), then the
gradient-matching bench at 256 px on DeepLabv3-ResNet101 and U-Net with steps/s and GPU utilisation,
merged into bench/results_gpu.json.

    python bench/gpu_check.py

Without CUDA it says so: the gpu tests are collected and reported as skipped, the bench is not run, and it
exits 0. Exit status otherwise: pytest's, then the bench's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_GPU = Path(__file__).parent / "results_gpu.json"


def main() -> int:
    cuda = torch.cuda.is_available()
    where = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'not built'}: {where}", flush=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "tests"], cwd=ROOT)
    if tests.returncode not in (0, 5):  # 5: nothing collected
        return tests.returncode
    if not cuda:
        print("skipped: the tests marked gpu (listed above) and the 256 px GPU bench; they need a CUDA GPU. "
              "Nothing failed.", flush=True)
        return 0
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", "gm", "--device", "cuda",
                            "--resolution", "256", "--results", str(RESULTS_GPU)], cwd=ROOT)
    if bench.returncode == 0:
        print(f"wrote {RESULTS_GPU}")
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
