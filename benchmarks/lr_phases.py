"""Resume a run's checkpoint and train it in phases of fixed learning rate, printing the loss of each window of steps.

A diagnostic for a training loss that moves with the learning rate rather than with the representation:
MoCo-style methods compare each query with a queue of keys encoded by earlier states of a momentum
encoder, so while the encoders move, the queue's negatives are stale and easier to reject than the
fresh positive key; when the learning rate falls to zero (the end of a cosine schedule) the queue fills
with keys of the current encoder and the loss rises. Raising the rate again lowers the loss within
about one queue turnover (queue size / global batch steps), faster than the representation can change.
One process, no Ray or MLflow: the run's own config, data, views, method and optimiser state.
Example: ``python benchmarks/lr_phases.py --run runs/<run> --phases 0:40,0.03:40,0:48``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.config import ExperimentConfig, load_config
from pipeline.data.build import Source, build_source
from pipeline.data.loader import build_loader
from pipeline.methods import Method, StepInfo, build_method, get_method
from pipeline.training.checkpoints import latest_checkpoint, load_checkpoint
from pipeline.training.optim import build_optimizer
from pipeline.training.step import batch_to_device, train_step


def parse_phases(text: str) -> list[tuple[float, int]]:
    """Return ``[(learning_rate, steps), ...]`` from ``"LR:STEPS,LR:STEPS"``; raise ValueError naming a bad phase."""
    phases = []
    for part in text.split(","):
        try:
            rate, steps = part.split(":")
            phase = (float(rate), int(steps))
        except ValueError:
            raise ValueError(f"--phases: {part!r} is not LR:STEPS (e.g. 0.03:40)") from None
        if phase[0] < 0 or phase[1] < 1:
            raise ValueError(f"--phases: {part!r} needs a learning rate >= 0 and at least one step")
        phases.append(phase)
    return phases


def resume_method(
    run_dir: Path, overrides: list[str]
) -> tuple[ExperimentConfig, Source, Method, torch.optim.Optimizer, int]:
    """Return the run's config, training set (method's views), method, optimiser and epoch at its latest checkpoint."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SystemExit(f"--run {run_dir}: no complete checkpoint (epoch_NNNN folder) in it")
    config = load_config(run_dir / "config.yaml", overrides)
    transform = get_method(config.method.name).train_transform(config)
    source = build_source(config.data, "train", transform=transform)
    method = build_method(config, source.num_classes)
    state = load_checkpoint(checkpoint)
    method.load_state_dict(state["method"])
    optimizer = build_optimizer(config.optim, method)
    optimizer.load_state_dict(state["optimizer"])
    return config, source, method, optimizer, int(state["epoch"])


def run_phases(
    config: ExperimentConfig,
    source: Source,
    method: Method,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    phases: list[tuple[float, int]],
    window: int,
) -> list[tuple[int, float, dict[str, float]]]:
    """Return ``(step, lr, mean losses over the window)`` for each window of ``window`` steps of the phases."""
    loader = build_loader(
        source,
        config.train.batch_size,
        rank=0,
        world_size=1,
        shuffle=True,
        drop_last=True,
        seed=config.data.seed + epoch,
        num_workers=config.data.num_workers,
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    total = sum(steps for _, steps in phases)
    batches = iter(loader)
    rows: list[tuple[int, float, dict[str, float]]] = []
    sums: dict[str, torch.Tensor] = {}
    step = 0
    for rate, steps in phases:
        for _ in range(steps):
            raw = next(batches, None)
            if raw is None:
                batches = iter(loader)
                raw = next(batches)
            batch = batch_to_device(raw, torch.device("cpu"), False)
            losses = train_step(method, method, optimizer, scaler, batch, StepInfo(epoch, step, total), rate, None)
            for name, value in losses.items():
                sums[name] = sums.get(name, torch.zeros(())) + value.detach().float()
            step += 1
            if step % window == 0:
                rows.append((step, rate, {name: float(value) / window for name, value in sums.items()}))
                sums = {}
    return rows


def main() -> None:
    """Parse arguments, resume the run and print one line per window of steps."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a run folder (holds config.yaml and epoch_NNNN)")
    parser.add_argument("--phases", default="0:40,0.03:40,0:48", help="LR:STEPS,... trained in order")
    parser.add_argument("--window", type=int, default=8, help="steps averaged per printed line")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.root=DEST")
    args = parser.parse_args()
    if not (args.run / "config.yaml").is_file():
        raise SystemExit(f"--run {args.run}: not a run folder (no config.yaml)")
    phases = parse_phases(args.phases)
    config, source, method, optimizer, epoch = resume_method(args.run, args.set)
    print(f"{args.run.name}: {config.method.name} after epoch {epoch}, global batch {config.train.batch_size}")
    for step, rate, means in run_phases(config, source, method, optimizer, epoch, phases, args.window):
        figures = "  ".join(f"{name} {value:.4f}" for name, value in sorted(means.items()))
        print(f"steps {step - args.window + 1:4d}-{step:4d}  lr {rate:<8g} {figures}", flush=True)


if __name__ == "__main__":
    main()
