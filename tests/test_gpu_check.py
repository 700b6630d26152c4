"""``benchmarks/gpu_check.py --smoke`` on the CPU, so that the GPU check cannot rot between GPU
sessions; ``--inject-mismatch`` (differently seeded weights on the second side of every comparison)
must make every agreement check fail and the command exit non-zero."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

AGREEMENT = ("bf16 vs fp32 loss", "GradCache on vs off", "ONNX parity")


def gpu_check(*args: str) -> tuple[int, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, [line for line in proc.stdout.splitlines() if line.startswith("CHECK ")]


def test_gpu_check_smoke_passes_and_fails_on_a_mismatch():
    code, checks = gpu_check()
    assert code == 0, checks
    assert len(checks) == 4 and all(": PASS " in c for c in checks), checks
    for name in (*AGREEMENT, "training steps"):
        assert any(name in c for c in checks), name
    # negative control: the same command with mismatched weights on one side of each comparison
    code, checks = gpu_check("--inject-mismatch")
    assert code == 1
    failed = [c for c in checks if ": FAIL " in c]
    assert len(failed) == 3 and all(any(name in c for c in failed) for name in AGREEMENT), checks
