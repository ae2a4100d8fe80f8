"""Print the wall time of the command line's fast paths in fresh interpreters: a config error and --print-config.

Both must answer before torch, Ray or MLflow load (goal: under 1.5 s on a cold start). Each case
runs ``--runs`` times as a new process; the figures are min / median / max wall seconds, plus
whether torch was imported (checked by ``-X importtime``). Example: ``python benchmarks/cold_start.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "unknown key (exit 2)": ["--config", "configs/quickstart.yaml", "--set", "nosuch.knob=1"],
    "--print-config (exit 0)": ["--config", "configs/quickstart.yaml", "--print-config"],
}


def run_once(arguments: list[str], import_time: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Return the wall seconds and the finished process of one cold ``python -m pipeline.pretrain``."""
    flags = ["-X", "importtime"] if import_time else []
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-m", "pipeline.pretrain", *arguments], cwd=ROOT, capture_output=True, text=True
    )
    return time.perf_counter() - started, done


def main() -> None:
    """Time each case and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.runs} runs per case after one warm-up")
    for name, arguments in CASES.items():
        run_once(arguments)
        times, codes = [], set()
        for _ in range(args.runs):
            seconds, done = run_once(arguments)
            times.append(seconds)
            codes.add(done.returncode)
        _, traced = run_once(arguments, import_time=True)
        heavy = sorted({m for m in ("torch", "ray", "mlflow") if f"| {m}\n" in traced.stderr})
        print(
            f"{name:26s} min {min(times):.2f}s  median {statistics.median(times):.2f}s  max {max(times):.2f}s  "
            f"exit {sorted(codes)}  heavy imports: {', '.join(heavy) or 'none'}"
        )


if __name__ == "__main__":
    main()
