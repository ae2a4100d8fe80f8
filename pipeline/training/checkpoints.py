"""Run folders and checkpoints: naming runs, finding the latest complete checkpoint, resume decisions.

A checkpoint folder holds ``checkpoint.pt`` (the full state), ``metrics.json`` (the epoch's
metrics, readable without loading networks) and, written last, ``manifest.json`` with the size and
SHA-256 of each. Ray copies the folder into the run's storage file by file, so an interrupt can leave
a torn copy, and a disk or copy fault can change bytes without changing sizes; a folder counts as
complete only when its manifest parses and every listed file has its size and its checksum.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.config import ConfigError, ExperimentConfig, to_yaml

CHECKPOINT_FILE = "checkpoint.pt"
# The epoch's metrics, also inside checkpoint.pt: reading a run's result must not load networks, optimiser and queue.
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
RUN_ID_FILE = "mlflow_run_id"
RUN_CONFIG_FILE = "config.yaml"
TRACKING_URI_FILE = "mlflow_tracking_uri"
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
# The keys that shape a checkpoint's state (networks, optimiser state): a run cannot resume under other values.
STATE_SHAPING_KEYS = (
    "method.name",
    "optim.name",
    "model.backbone",
    "model.cifar_stem",
    "model.width",
    "model.timm_kwargs",
    "model.proj_hidden_dim",
    "model.proj_dim",
)


def epoch_dir_name(epochs_done: int) -> str:
    """Return the checkpoint folder name for a checkpoint taken after ``epochs_done`` epochs."""
    return f"epoch_{epochs_done:04d}"


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a short hash of everything that changes what is trained (not where or how it is tracked)."""
    payload = config.model_dump(mode="json", exclude={"ray": True, "tracking": True, "eval": {"linear"}})
    payload["train"].pop("log_every_steps", None)
    payload["train"].pop("inject_failure_at_epoch", None)
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def default_run_name(config: ExperimentConfig) -> str:
    """Return ``method-source-fingerprint``: the same command names (and so resumes) the same run."""
    return f"{config.method.name}-{config.data.source}-{config_fingerprint(config)}"


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Return the run's ``epoch_NNNN`` folders, newest first (complete or not)."""
    if not run_dir.is_dir():
        return []
    found = [(int(match.group(1)), child) for child in run_dir.iterdir() if (match := _EPOCH_DIR.match(child.name))]
    return [folder for _, folder in sorted(found, reverse=True)]


def file_sha256(path: Path) -> str:
    """Return the SHA-256 (hex) of a file's content (about 1.7 GB/s here: well under a second per checkpoint)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def incomplete_reason(checkpoint_dir: Path) -> str | None:
    """Return why a checkpoint folder is not complete or is corrupt (None when it is whole)."""
    try:
        manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST_FILE}"
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST_FILE} ({exc})"
    for name, size in manifest.get("files", {}).items():
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes of {size}"
    # Manifests written before checksums were recorded carry sizes only; those folders are checked by size.
    for name, digest in manifest.get("sha256", {}).items():
        if file_sha256(checkpoint_dir / name) != digest:
            return f"{name} is corrupt (its content does not match the manifest's SHA-256)"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the newest complete checkpoint folder of a run, or None."""
    return next((folder for folder in checkpoint_folders(run_dir) if incomplete_reason(folder) is None), None)


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
    """Return None after writing ``state``, its ``metrics`` and, last, the manifest (sizes, SHA-256) to a folder."""
    folder = Path(folder)
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / METRICS_FILE).write_text(json.dumps(state["metrics"], sort_keys=True))
    names = (CHECKPOINT_FILE, METRICS_FILE)
    sizes = {name: (folder / name).stat().st_size for name in names}
    digests = {name: file_sha256(folder / name) for name in names}
    manifest = {"epoch": state["epoch"], "files": sizes, "sha256": digests}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True))


def checkpoint_metrics(checkpoint_dir: Path) -> dict[str, float]:
    """Return the metrics of the epoch a checkpoint folder holds, from its small metrics file."""
    metrics = json.loads((Path(checkpoint_dir) / METRICS_FILE).read_text())
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
    if checkpoint is not None:
        check_resumable(config, storage / name)
    return name, checkpoint


def _value_at(tree: Any, dotted: str) -> Any:
    """Return the value at ``dotted`` (``section.key``) in a nested mapping, None where a part is missing."""
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resumable(config: ExperimentConfig, run_dir: Path) -> None:
    """Raise ConfigError naming every state-shaping key whose value differs from the run's recorded config.

    Such a change (another optimiser, backbone or width under an explicit ``ray.run_name``) would otherwise
    fail deep inside ``load_state_dict`` on a worker, or, for optimisers whose states happen to fit, resume
    silently with the wrong state. A run folder without its config (written by an older version) is not checked.
    """
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        return
    recorded = yaml.safe_load(path.read_text()) or {}
    current = config.model_dump(mode="json")
    changed = [
        f"{key} = {_value_at(current, key)!r} (the run was started with {_value_at(recorded, key)!r})"
        for key in STATE_SHAPING_KEYS
        if _value_at(current, key) != _value_at(recorded, key)
    ]
    if changed:
        raise ConfigError(
            f"run '{run_dir.name}' cannot resume with {'; '.join(changed)}: its checkpoints hold state of the "
            "recorded value; restore it, or start a new run (another ray.run_name)"
        )


def check_storage(storage: str) -> None:
    """Return None if ``storage`` (the resolved ``ray.storage_path``) is, or can be made, a writable folder.

    Raises ConfigError naming the key: a run that would fail on its first checkpoint must fail before any
    work. Nothing is created: the nearest existing folder on the path is probed instead.
    """
    if "://" in storage:
        # A URI (s3://, gs://) is written by Ray's own file system layer; nothing local to check.
        return
    folder = Path(storage)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise ConfigError(f"ray.storage_path = {storage!r} cannot hold runs: {existing} is a file, not a folder")
    try:
        # A probe file: permission bits alone do not say (root, read-only mounts, /proc).
        tempfile.TemporaryFile(dir=existing, prefix=".write-probe-").close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"ray.storage_path = {storage!r} cannot hold runs: {existing} cannot be written ({reason})"
        ) from None


def read_run_id(run_dir: Path) -> str | None:
    """Return the MLflow run id recorded for a run folder, if any."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def write_run_id(run_dir: Path, run_id: str, tracking_uri: str) -> None:
    """Record the MLflow run id and store beside the run's checkpoints so that a resume or evaluation logs there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_ID_FILE).write_text(run_id + "\n")
    (run_dir / TRACKING_URI_FILE).write_text(tracking_uri + "\n")


def read_tracking_uri(run_dir: Path) -> str | None:
    """Return the MLflow store a run folder's run lives in, if recorded."""
    path = run_dir / TRACKING_URI_FILE
    return path.read_text().strip() if path.is_file() else None


def write_run_config(run_dir: Path, config: ExperimentConfig) -> None:
    """Record the resolved config beside the run's checkpoints (what evaluation rebuilds the method from)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_CONFIG_FILE).write_text(to_yaml(config))
