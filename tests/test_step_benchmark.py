"""The step benchmarks run with torch alone (a bare GPU node): no Ray, MLflow or FAISS; lightly is optional."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Installed as sitecustomize in every process of the run (the benchmark spawns one per measurement).
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "faiss"):
            raise ImportError(f"{name} is not installed on this machine")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_step_benchmark_needs_only_torch_and_prints_flops(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "ray is not installed" in blocked.stderr
    command = [sys.executable, "benchmarks/train_step.py", "--methods", "moco", "hcsc", "--stems", "cifar"]
    command += ["--batch-size", "4", "--size", "16", "--steps", "1"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if "images/s" in line]
    assert [row.split()[0] for row in rows] == ["moco", "hcsc"]
    # ResNet-18 with the CIFAR stem at 16 px: ~0.28 GFLOP per forward, a query forward+backward and a key forward.
    gflops = [float(row.split("GFLOP/img")[0].split()[-1]) for row in rows]
    assert all(1.0 < value < 1.3 for value in gflops), rows


def blocking_env(tmp_path: Path, *names: str) -> dict[str, str]:
    """Return an environment in which importing any of ``names`` (top-level packages) fails."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.replace('("ray", "mlflow", "faiss")', repr(names)))
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_lightly_benchmark_needs_only_torch_and_lightly(tmp_path: Path) -> None:
    pytest.importorskip("lightly", reason="lightly is the optional bench extra")
    env = blocking_env(tmp_path, "ray", "mlflow", "faiss")
    command = [sys.executable, "benchmarks/vs_lightly.py", "--batch-size", "16", "--size", "16", "--steps", "1"]
    command += ["--warmup", "1", "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ratios = [line for line in done.stdout.splitlines() if "ratio x" in line]
    assert [line.split(":")[0] for line in ratios] == ["moco", "simclr"], done.stdout


def test_lightly_benchmark_without_lightly_says_so_and_exits_2(tmp_path: Path) -> None:
    env = blocking_env(tmp_path, "ray", "mlflow", "faiss", "lightly")
    done = subprocess.run(
        [sys.executable, "benchmarks/vs_lightly.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "lightly is not installed" in done.stderr and "pip install -e '.[bench]'" in done.stderr
