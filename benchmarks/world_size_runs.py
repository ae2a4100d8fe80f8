"""Print each method family's per-epoch training loss on 1 and on 2 Ray Train workers with the same global batch.

One tiny run per (method, world size) through ``pipeline.runtime.launch.pretrain`` on local Ray (synthetic data,
width-8 ResNet-18, global batch 32, 4 epochs by default), each in its own temporary run folder and
MLflow store. The global batch holds the same images at both world sizes (the sharded sampler splits
each global batch between the workers); what differs is each worker's batch-norm statistics and the
augmentations each worker draws. The last column is the largest relative gap between the two curves.
Example: ``python benchmarks/world_size_runs.py --methods moco supcon selfcon ascl_byol dscl dim cpc``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import mlflow
import ray

from pipeline.config import load_config, with_overrides
from pipeline.methods.registry import method_config_class
from pipeline.runtime.launch import pretrain

FAMILIES = ("moco", "supcon", "selfcon", "ascl_byol", "dscl", "dim", "cpc")


def losses(method: str, workers: int, epochs: int, folder: Path) -> list[float]:
    """Return the per-epoch ``train/loss`` of a tiny run of ``method`` on ``workers`` Ray workers."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    overrides: dict[str, object] = {
        "method.name": method,
        "data.synthetic.num_train": 256,
        "data.synthetic.num_test": 64,
        "data.num_workers": 0,
        "model.width": 8,
        "train.batch_size": 32,
        "train.epochs": epochs,
        "eval.pixel_baseline": False,
        "eval.knn_every": epochs,
        "ray.num_workers": workers,
        "ray.storage_path": str(folder / "runs"),
        "ray.run_name": f"{method}-{workers}",
        "tracking.uri": uri,
    }
    if "queue_size" in method_config_class(method).model_fields:
        overrides["method.queue_size"] = 256
    if method == "cpc":
        overrides.update({"method.grid": 3, "method.skip_steps": 0, "method.steps": 2})
    result = pretrain(with_overrides(load_config("quickstart.yaml"), overrides))
    history = mlflow.MlflowClient(uri).get_metric_history(result.mlflow_run_id, "train/loss")
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]


def curve(values: list[float]) -> str:
    """Return a loss curve as space-separated values."""
    return " ".join(f"{value:.4f}" for value in values)


def main() -> None:
    """Parse arguments, run each method on 1 and 2 workers and print the two loss curves."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(FAMILIES))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False)
    rows = []
    try:
        for method in args.methods:
            with tempfile.TemporaryDirectory() as folder:
                one = losses(method, 1, args.epochs, Path(folder))
                two = losses(method, 2, args.epochs, Path(folder))
            gap = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
            rows.append((method, one, two, gap))
    finally:
        ray.shutdown()
    print(f"per-epoch train/loss, global batch 32, {args.epochs} epochs: 1 worker | 2 workers | largest relative gap")
    for method, one, two, gap in rows:
        print(f"{method:10s} {curve(one)} | {curve(two)} | {gap * 100:.2f}%")


if __name__ == "__main__":
    main()
