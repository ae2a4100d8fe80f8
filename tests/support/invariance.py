"""World-size invariance harness: the same optimisation steps on one worker and on a gloo group of several.

Every rank builds the method from the same seed, the global batch is made once from fixed seeds, and
rank r trains on rows ``r*B/W .. (r+1)*B/W`` of it, wrapped in DDP exactly as the training loop
wraps it. Batch statistics are taken out of the comparison by putting every batch-norm layer in eval
mode; everything else (queues, momentum encoders, labels, in-batch contrasts) is compared in float64.
Plain torch.distributed, no Ray: the whole registry runs in a few seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate

from pipeline.config import ExperimentConfig, load_config, with_overrides
from pipeline.methods import Batch, Method, StepInfo, build_method, get_method
from pipeline.training.optim import build_optimizer
from pipeline.training.step import train_step

GLOBAL_BATCH = 8
NUM_CLASSES = 3
STEPS = 2
LEARNING_RATE = 0.5
# Per-method settings: HCSC's selection masks are Bernoulli draws from each worker's own random stream (a
# different stream per world size by design), so the deterministic comparison runs with selection off.
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "hcsc": {"method.instance_selection": False, "method.prototype_selection": False, "method.warmup_epochs": 0},
    "ascl": {"method.num_neighbors": 2},
    "ascl_byol": {"method.num_neighbors": 2},
    "dim": {"method.two_view": True},
    "cpc": {"method.directions": ["down", "right"], "method.grid": 3, "method.skip_steps": 0, "method.steps": 2},
}
HIERARCHY = (6, 3, 2)


def invariance_config(name: str, **overrides: Any) -> ExperimentConfig:
    """Return a tiny config of method ``name`` for the invariance check (16 px, width 4, batch 8, queue 16)."""
    values: dict[str, Any] = {
        "model.width": 4,
        "model.cifar_stem": True,
        "model.batch_norm": "plain",
        "data.image_size": 16,
        "train.batch_size": GLOBAL_BATCH,
        "method.queue_size": 16,
        "optim.weight_decay": 1e-3,
    }
    if name == "cpc":
        values["data.image_size"] = 32
    values.update(METHOD_OVERRIDES.get(name, {}))
    values.update(overrides)
    config = load_config(None, [f"method.name={name}"])
    known = type(config.method).model_fields
    # Keys a method does not have (a queue for SupCon) are dropped, so one table serves the whole registry.
    values = {key: value for key, value in values.items() if not key.startswith("method.") or key[7:] in known}
    return with_overrides(config, values)


def global_batch(method_class: type[Method], config: ExperimentConfig) -> Batch:
    """Return the whole global batch of the method's declared views of seeded random images, in float64."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    size = config.data.image_size
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)) for _ in range(GLOBAL_BATCH)
    ]
    transform = method_class.train_transform(config)
    views = default_collate([transform(image) for image in images])
    labels = torch.arange(GLOBAL_BATCH) % NUM_CLASSES
    return Batch(views=_to_double(views), labels=labels, indices=torch.arange(GLOBAL_BATCH))


def _to_double(value: Any) -> Any:
    """Return ``value`` (tensor or nested dict) with floating tensors in float64."""
    if isinstance(value, dict):
        return {key: _to_double(item) for key, item in value.items()}
    return value.double() if value.is_floating_point() else value


def _slice(value: Any, rank: int, world: int) -> Any:
    """Return rank ``rank``'s contiguous share of a batch tensor (or nested dict of them)."""
    if isinstance(value, dict):
        return {key: _slice(item, rank, world) for key, item in value.items()}
    rows = value.shape[0] // world
    return value[rank * rows : (rank + 1) * rows]


def local_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Return the rows of ``batch`` that worker ``rank`` of ``world`` trains on."""
    return Batch(
        views=_slice(batch.views, rank, world),
        labels=_slice(batch.labels, rank, world),
        indices=_slice(batch.indices, rank, world),
    )


def install_prototypes(method: Method) -> None:
    """Give an HCSC method a fixed seeded hierarchy over the global batch's indices (no clustering actor)."""
    from pipeline.methods.hcsc.method import Prototypes

    generator = torch.Generator().manual_seed(7)
    dim = method.context.config.model.proj_dim
    centroids = tuple(
        F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1) for n in HIERARCHY
    )
    concentration = tuple(0.1 + 0.2 * torch.rand(n, generator=generator, dtype=torch.float64) for n in HIERARCHY)
    level0 = torch.arange(GLOBAL_BATCH) % HIERARCHY[0]
    assignments = [level0]
    for upper in HIERARCHY[1:]:
        assignments.append(assignments[-1] % upper)
    method.prototypes = Prototypes(
        centroids=centroids,
        concentration=concentration,
        assignments=tuple(assignments),
        similarity=tuple(lower @ upper.T for lower, upper in zip(centroids, centroids[1:], strict=False)),
    )


@dataclass
class StepResult:
    """What one worker ends with: the loss of every step (mean across workers) and every parameter and buffer."""

    losses: list[float]
    state: dict[str, torch.Tensor]


def run_steps(name: str, rank: int, world: int, **overrides: Any) -> StepResult:
    """Return the losses and final state of ``STEPS`` optimisation steps of method ``name`` on worker ``rank``."""
    config = invariance_config(name, **overrides)
    method_class = get_method(name)
    method_class.validate(config, world)
    batch = local_batch(global_batch(method_class, config), rank, world)  # views made in float32, then cast
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        method = build_method(config, NUM_CLASSES, rank, world).double()
        for module in method.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()
        if name == "hcsc":
            install_prototypes(method)
        model: nn.Module = DistributedDataParallel(method) if world > 1 else method
        optimizer = build_optimizer(config.optim, method)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        losses = []
        for step in range(STEPS):
            torch.manual_seed(100 + step)
            values = train_step(model, method, optimizer, scaler, batch, StepInfo(0, step, STEPS), LEARNING_RATE, None)
            loss = values["loss"].detach().clone()
            if world > 1:
                dist.all_reduce(loss)
                loss /= world
            losses.append(float(loss))
        state = {key: value.detach().clone() for key, value in method.state_dict().items()}
    finally:
        torch.set_default_dtype(default_dtype)
    return StepResult(losses, state)


def relative_error(reference: StepResult, other: StepResult) -> float:
    """Return the largest relative difference over the losses and every floating parameter and buffer."""
    errors = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference.losses, other.losses, strict=True)]
    for key, value in reference.state.items():
        if value.is_floating_point():
            scale = value.abs().max().clamp_min(1e-12)
            errors.append(float((value - other.state[key]).abs().max() / scale))
        elif not torch.equal(value, other.state[key]):
            errors.append(float("inf"))
    return max(errors)


def worker(rank: int, world: int, cases: dict[str, tuple[str, dict[str, Any]]], init_file: str, out_dir: str) -> None:
    """Run every case (method name and overrides, by case id) on this rank of a gloo group; rank 0 saves them."""
    torch.set_num_threads(1)  # two ranks on a 2-core machine: one thread each, no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {case: run_steps(name, rank, world, **overrides) for case, (name, overrides) in cases.items()}
        if rank == 0:
            saved = {name: (result.losses, result.state) for name, result in results.items()}
            torch.save(saved, Path(out_dir) / "w.pt")
    finally:
        dist.destroy_process_group()


def load_results(out_dir: Path) -> dict[str, StepResult]:
    """Return the results rank 0 saved, by case id."""
    saved = torch.load(out_dir / "w.pt", weights_only=True)
    return {name: StepResult(losses, state) for name, (losses, state) in saved.items()}
