"""Run folders and checkpoints: naming runs, finding the latest checkpoint, resume decisions."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, ExperimentConfig

CHECKPOINT_FILE = "checkpoint.pt"
# The epoch's metrics, also inside checkpoint.pt: reading a run's result must not load networks, optimiser and queue.
METRICS_FILE = "metrics.json"
RUN_ID_FILE = "mlflow_run_id"
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")


def epoch_dir_name(epochs_done: int) -> str:
    """Return the checkpoint folder name for a checkpoint taken after ``epochs_done`` epochs."""
    return f"epoch_{epochs_done:04d}"


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a short hash of everything that changes what is trained (not where or how it is tracked)."""
    payload = config.model_dump(mode="json", exclude={"ray", "tracking"})
    payload["train"].pop("log_every_steps", None)
    payload["train"].pop("inject_failure_at_epoch", None)
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def default_run_name(config: ExperimentConfig) -> str:
    """Return ``method-source-fingerprint``: the same command names (and so resumes) the same run."""
    return f"{config.method.name}-{config.data.source}-{config_fingerprint(config)}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the newest complete checkpoint folder of a run, or None."""
    if not run_dir.is_dir():
        return None
    found = []
    for child in run_dir.iterdir():
        match = _EPOCH_DIR.match(child.name)
        if match and (child / CHECKPOINT_FILE).is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def checkpoint_epoch(checkpoint_dir: Path) -> int:
    """Return how many epochs the checkpoint folder holds (from its name)."""
    match = _EPOCH_DIR.match(checkpoint_dir.name)
    if not match:
        raise ValueError(f"{checkpoint_dir} is not a checkpoint folder (expected epoch_NNNN)")
    return int(match.group(1))


def load_checkpoint(checkpoint_dir: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Return the state stored in a checkpoint folder."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in checkpoint folder {checkpoint_dir}")
    return torch.load(path, map_location=device, weights_only=True)


def write_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Return None after writing ``state`` (with its ``metrics``) to a checkpoint folder about to be reported."""
    torch.save(state, Path(folder) / CHECKPOINT_FILE)
    (Path(folder) / METRICS_FILE).write_text(json.dumps(state["metrics"], sort_keys=True))


def checkpoint_metrics(checkpoint_dir: Path) -> dict[str, float]:
    """Return the metrics of the epoch a checkpoint folder holds, from its small metrics file when present."""
    path = Path(checkpoint_dir) / METRICS_FILE
    # Checkpoints written before the metrics file existed only hold them inside checkpoint.pt.
    metrics = json.loads(path.read_text()) if path.is_file() else load_checkpoint(checkpoint_dir)["metrics"]
    return {key: float(value) for key, value in metrics.items()}


def resolve_run(config: ExperimentConfig, storage: Path) -> tuple[str, Path | None]:
    """Return the run name to use and the checkpoint to resume from (None: start fresh), per ``ray.resume``."""
    name = config.ray.run_name or default_run_name(config)
    checkpoint = latest_checkpoint(storage / name)
    mode = config.ray.resume
    if mode == "must" and checkpoint is None:
        raise ConfigError(f"ray.resume = 'must' but run '{name}' has no checkpoint under {storage / name}")
    if mode == "never" and (storage / name).exists():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        checkpoint = None
    return name, checkpoint


def read_run_id(run_dir: Path) -> str | None:
    """Return the MLflow run id recorded for a run folder, if any."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def write_run_id(run_dir: Path, run_id: str) -> None:
    """Record the MLflow run id beside the run's checkpoints so that a resume logs into the same run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_ID_FILE).write_text(run_id + "\n")
