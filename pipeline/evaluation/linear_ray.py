"""The augmented linear protocol on Ray Train: crops and flips through the frozen networks every epoch.

MoCo's recipe by default (SGD lr 30, momentum 0.9, no weight decay, 100 epochs, lr x0.1 at epochs
60 and 80, random-resized-crop (0.08-1) and flip). Each worker holds the frozen evaluation networks
and one linear layer per network (DDP over the layers); class-balanced sampling draws every class
equally often per draw, sharded across workers. At the end the test logits are gathered by index and
rank 0 writes them beside the run for the driver to score. Probe training is not checkpointed: an
interrupted evaluation starts again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.nn.functional as F
from ray.train.torch import get_device
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from pipeline.config import ExperimentConfig, build_config
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.loader import EpochLoader, build_loader
from pipeline.data.parquet import ParquetShards
from pipeline.data.recipes import EVAL_VIEW, HorizontalFlip, RandomResizedCrop, ViewRecipe
from pipeline.data.views import build_view
from pipeline.evaluation.linear import class_balanced_indices
from pipeline.evaluation.monitor import gather_by_index
from pipeline.evaluation.stage import EVAL_DIR, networks_to_probe
from pipeline.runtime.cluster import check_resources, cluster_address, ensure_ray, fit, make_trainer, storage_root
from pipeline.runtime.progress import ImageProgress, ProgressRelay, ProgressReporter
from pipeline.training.seeding import seed_everything


class LinearHeads(nn.Module):
    """One linear classifier per probed network; forward maps ``{name: features}`` to ``{name: logits}``."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, num_classes) for name, dim in dims.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return each head's logits of its network's features."""
        return {name: self.heads[name](value) for name, value in features.items()}


class ClassBalancedSampler(Sampler[int]):
    """This rank's share of ``len(labels)`` class-balanced draws per epoch (the same draws on every rank)."""

    def __init__(self, labels: torch.Tensor, rank: int, world_size: int, seed: int) -> None:
        self.labels, self.rank, self.world_size, self.seed, self.epoch = labels, rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose draws are made."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Return the number of draws of this rank."""
        return len(self.labels) // self.world_size

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's draws of the epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draws = class_balanced_indices(self.labels, len(self) * self.world_size, generator)
        return iter(draws[self.rank :: self.world_size].tolist())


def _train_loader(
    config: ExperimentConfig, sampling: str, batch: int, rank: int, world: int
) -> EpochLoader | DataLoader:
    """Return this rank's augmented training loader (uniform or class-balanced)."""
    augmented = config.eval.linear.augmented
    recipe = ViewRecipe((RandomResizedCrop(scale=tuple(augmented.crop_scale)), HorizontalFlip()))
    source = build_source(config.data, "train", transform=build_view(recipe, config.data))
    seed, workers = config.eval.linear.seed, config.data.num_workers
    if sampling != "class_balanced":
        return build_loader(
            source, batch, rank=rank, world_size=world, shuffle=True, drop_last=True, seed=seed, num_workers=workers
        )
    if isinstance(source, ParquetShards):
        raise DataError("class-balanced sampling in the augmented protocol needs a map-style source, not Parquet")
    labels = torch.as_tensor(source.labels, dtype=torch.long)
    sampler = ClassBalancedSampler(labels[labels >= 0], rank, world, seed)
    return DataLoader(source, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers)


def linear_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train the linear layers of one worker and, on rank 0, write the gathered test logits."""
    config = build_config(loop_config["config"])
    augmented = config.eval.linear.augmented
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = get_device()
    progress = ProgressReporter(loop_config.get("progress"))
    seed_everything(config.eval.linear.seed, rank)
    num_classes = build_source(config.data, "train").num_classes
    networks = {
        name: network.to(device).eval()
        for name, network in networks_to_probe(config, Path(loop_config["checkpoint"]), num_classes).items()
    }
    with torch.no_grad():
        probe_input = torch.zeros(1, 3, config.data.image_size, config.data.image_size, device=device)
        dims = {name: network(probe_input).shape[1] for name, network in networks.items()}
    heads = LinearHeads(dims, num_classes).to(device)
    model: nn.Module = heads
    if world > 1:
        model = DistributedDataParallel(heads, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(
        heads.parameters(), lr=augmented.lr, momentum=augmented.momentum, weight_decay=augmented.weight_decay
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=augmented.milestones, gamma=0.1)
    loader = _train_loader(config, loop_config["sampling"], augmented.batch_size // world, rank, world)
    global_batch = augmented.batch_size // world * world
    for epoch in range(augmented.epochs):
        (loader if isinstance(loader, EpochLoader) else loader.sampler).set_epoch(epoch)
        total = torch.zeros((), device=device)
        steps = 0
        label = f"  linear epoch {epoch + 1}/{augmented.epochs}:"
        epoch_progress = ImageProgress(progress.say, label, len(loader) * global_batch)
        for images, labels, _ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.no_grad():
                features = {name: network(images) for name, network in networks.items()}
            logits = model(features)
            loss = sum(F.cross_entropy(value, labels, ignore_index=-1) for value in logits.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            steps += 1
            # The epoch's own line closes it: only the lines before its last step are said here.
            if rank == 0 and steps < len(loader):
                epoch_progress(steps * global_batch)
        schedule.step()
        mean_loss = float(total / max(steps, 1))
        ray.train.report({"epoch": epoch + 1, "linear/loss": mean_loss})
        if rank == 0:
            progress.say(f"linear epoch {epoch + 1}/{augmented.epochs} loss {mean_loss:.4f}")
    _write_test_logits(config, networks, heads, Path(loop_config["output"]), rank, world, device)


@torch.no_grad()
def _write_test_logits(
    config: ExperimentConfig,
    networks: dict[str, nn.Module],
    heads: LinearHeads,
    output: Path,
    rank: int,
    world: int,
    device: torch.device,
) -> None:
    """Gather every rank's test logits by index; rank 0 writes ``{"logits": {name: [M, C]}, "labels": [M]}``."""
    source = build_source(config.data, "test", transform=build_view(EVAL_VIEW, config.data))
    loader = build_loader(
        source,
        256,
        rank=rank,
        world_size=world,
        shuffle=False,
        drop_last=False,
        seed=config.eval.linear.seed,
        num_workers=config.data.num_workers,
    )
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in networks}
    indices = []
    for images, _, index in loader:
        images = images.to(device, non_blocking=True)
        for name, network in networks.items():
            parts[name].append(heads.heads[name](network(images)))
        indices.append(index.to(device))
    index = torch.cat(indices)
    logits = {name: gather_by_index(torch.cat(values), index, len(source)).cpu() for name, values in parts.items()}
    if rank == 0:
        output.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"logits": logits, "labels": torch.as_tensor(source.labels, dtype=torch.long)}, output)


def augmented_logits(
    config: ExperimentConfig, checkpoint: Path, run_dir: Path, key: str, sampling: str, verbose: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Return each probed network's test logits and the test labels after the augmented protocol on Ray Train."""
    ensure_ray(config.ray, verbose)
    check_resources(config.ray, local=cluster_address(config.ray) is None)
    output = run_dir / EVAL_DIR / f"augmented-{key}-logits.pt"
    loop_config = {
        "config": config.model_dump(mode="json"),
        "checkpoint": str(checkpoint),
        "output": str(output),
        "sampling": sampling,
    }
    relay = ProgressRelay()
    try:
        loop_config["progress"] = relay.handle
        name = f"{run_dir.name}-linear-{key}"
        fit(make_trainer(linear_loop_per_worker, loop_config, config.ray, name, storage_root(config.ray)))
    finally:
        relay.close()
    stored = torch.load(output, weights_only=True)
    return stored["logits"], stored["labels"]
