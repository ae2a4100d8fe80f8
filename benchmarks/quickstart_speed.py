"""Print the quickstart's end-to-end speed under each speed setting, beside its pure training step.

Each setting runs the README's main command (``python -m pipeline.pretrain --config configs/quickstart.yaml``)
in a fresh process with its own MLflow store and run folder, and this prints its wall time (Ray's start,
pretraining, the kNN passes and the final evaluation included), the median images/s of its epochs after the
first (``perf/images_per_s``: the training steps and their views, with the loader's waits) and its final kNN.
The settings: ``defaults`` (the quickstart as shipped), ``loader-views`` (the PIL views made in one loader
process beside a one-thread worker: the quickstart before the batched views), ``local`` (the defaults
with ``--local``: the same loop in this process, no Ray) and ``bf16`` (``train.amp: bf16``: bf16 autocast, which
pays on a CPU with bf16 units, AVX-512 BF16 or AMX, and slows others). Then the pure step
(``benchmarks/train_step.py --quickstart --methods moco`` at the defaults' thread count, under each setting's
``train.amp``, views made on the device, no loader, no online probe) and each setting's epoch images/s over it.
Needs Ray and MLflow (it runs the pipeline); run it on a quiet machine.
Example: ``python benchmarks/quickstart_speed.py --epochs 8``; bf16 against float32:
``... --settings defaults bf16``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def overrides(*assignments: str) -> list[str]:
    """Return ``--set`` arguments for ``key=value`` assignments."""
    return [part for assignment in assignments for part in ("--set", assignment)]


SETTINGS: dict[str, list[str]] = {
    "defaults": [],
    "loader-views": overrides("data.augment_on=loader", "data.num_workers=1", "ray.cpus_per_worker=1"),
    "local": ["--local"],
    "bf16": overrides("train.amp=bf16"),
}
# The train.amp each setting runs under (the defaults' ``auto`` is float32 on a CPU).
SETTING_AMP = {"bf16": "bf16"}
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*?knn ([\d.]+)% .*?(\d+) img/s", re.MULTILINE)
STEP_LINE = re.compile(r"^moco .*?([\d.]+) images/s", re.MULTILINE)


def run_setting(arguments: list[str], epochs: int, folder: Path) -> tuple[float, list[float], float]:
    """Return the wall seconds, the per-epoch images/s and the last kNN top-1 of one quickstart run."""
    store = f"tracking.uri=sqlite:///{folder / 'mlflow.db'}"
    settings = overrides(f"train.epochs={epochs}", store, f"ray.storage_path={folder / 'runs'}")
    command = [sys.executable, "-m", "pipeline.pretrain", "--config", "configs/quickstart.yaml", *settings, *arguments]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    epochs_seen = EPOCH_LINE.findall(done.stdout)
    if len(epochs_seen) != epochs:
        raise SystemExit(f"expected {epochs} epoch lines from {' '.join(command)}, found {len(epochs_seen)}")
    return wall, [float(rate) for *_, rate in epochs_seen], float(epochs_seen[-1][2])


def pure_step(threads: int, repeats: int, amp: str) -> float:
    """Return the median images/s of the quickstart's MoCo step under ``amp``, its views made on the device."""
    command = [sys.executable, "benchmarks/train_step.py", "--quickstart", "--methods", "moco", "--amp", amp]
    command += ["--threads", str(threads), "--repeats", str(repeats), "--augment-on", "device"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    found = STEP_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-1000:]}{done.stderr[-1000:]}")
    return float(found.group(1))


def main() -> None:
    """Run each setting, then the pure step; print one line each and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8, help="train.epochs of each run (at least 2)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2, help="the pure step's thread count (the defaults' CPUs)")
    parser.add_argument("--repeats", type=int, default=3, help="pure-step measurements (median)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch's rate includes warm-up")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.settings:
            wall, per_epoch, knn = run_setting(SETTINGS[name], args.epochs, Path(scratch) / name)
            rates[name] = statistics.median(per_epoch[1:])
            print(
                f"{name:13s} wall {wall:6.1f} s   epochs 2-{args.epochs} {rates[name]:5.0f} img/s "
                f"(per epoch {', '.join(f'{rate:.0f}' for rate in per_epoch)})   final kNN {knn:.2f}%"
            )
    steps = {
        amp: pure_step(args.threads, args.repeats, amp) for amp in sorted({SETTING_AMP.get(n, "auto") for n in rates})
    }
    for amp, step in steps.items():
        print(
            f"pure step     {step:5.0f} img/s at {args.threads} threads, train.amp {amp} (views on the device, "
            f"no loader, no probe)"
        )
    for name, rate in rates.items():
        print(f"{name:13s} epoch / pure step {rate / steps[SETTING_AMP.get(name, 'auto')]:.2f}")
    if "defaults" in rates and "loader-views" in rates:
        print(f"defaults / loader-views {rates['defaults'] / rates['loader-views']:.2f}x img/s")


if __name__ == "__main__":
    main()
