"""Print a method's loss and the spread of its embeddings over its first steps, to see a collapse as it happens.

One process, no Ray or MLflow: the run's own data source, loader, views, method, optimiser and
learning-rate schedule (``pipeline.training.step.train_step``, as the training loop), for ``--steps`` steps.
Every ``--every`` steps it prints the loss, the learning rate and two collapse indicators on a fixed
batch of evaluation-view training images: the mean cosine similarity between different images' backbone
features (1 = every image the same) and the same for the method's projected embeddings when it has
an ``encoder``/``online``/``network`` module (SelfCon: the backbone branch's head). A supervised
contrastive loss whose embeddings are all equal sits at ``log(N - 1) * T / T_base``; it is printed for
the methods that have those temperatures. Configs and overrides as ``pipeline.pretrain``.
Example: ``python benchmarks/collapse_probe.py --config configs/selfcon_synthetic.yaml --set
data.source=cifar10 --set data.root=data/cifar10 --steps 200``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.data.build import build_source
from pipeline.data.loader import build_loader
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.methods import StepInfo, build_method, get_method
from pipeline.training.optim import build_optimizer, lr_schedule
from pipeline.training.step import autocast_dtype, batch_to_device, train_step

PROBE_IMAGES = 256


def mean_off_diagonal_cosine(features: torch.Tensor) -> float:
    """Return the mean cosine similarity between different rows of ``features [N, D]``."""
    unit = F.normalize(features.float(), dim=1)
    similarity = unit @ unit.T
    count = similarity.shape[0]
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


@torch.no_grad()
def spreads(method: torch.nn.Module, images: torch.Tensor) -> tuple[float, float | None]:
    """Return the mean off-diagonal cosine of the backbone features and, where found, of the projected embeddings."""
    was_training = method.training
    method.eval()
    backbone = method.evaluation_networks()["backbone"]
    features = backbone(images)
    projected = None
    for attribute in ("online", "encoder"):
        encoder = getattr(method, attribute, None)
        if encoder is not None and hasattr(encoder, "head"):
            projected = mean_off_diagonal_cosine(encoder(images))
    network = getattr(method, "network", None)
    if projected is None and network is not None:
        projected = mean_off_diagonal_cosine(network(images)[-1])  # SelfCon: the backbone branch's embedding
    method.train(was_training)
    return mean_off_diagonal_cosine(features), projected


def main() -> None:
    """Parse arguments, train ``--steps`` steps in this process and print the loss and spreads every few steps."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    data, train = config.data, config.train
    method_class = get_method(config.method.name)
    method_class.validate(config, 1)
    source = build_source(data, "train", transform=method_class.train_transform(config))
    loader = build_loader(
        source,
        train.batch_size,
        rank=0,
        world_size=1,
        shuffle=True,
        drop_last=True,
        seed=data.seed,
        num_workers=data.num_workers,
    )
    probe_source = build_source(data, "train", transform=build_view(EVAL_VIEW, data))
    probe_images = torch.stack([probe_source[index][0] for index in range(min(PROBE_IMAGES, len(probe_source)))])
    torch.manual_seed(train.seed)
    method = build_method(config, source.num_classes)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rates = lr_schedule(config.optim, train.batch_size, len(loader), train.epochs)
    dtype = autocast_dtype(train.amp)
    params = config.method
    collapsed = None
    if hasattr(params, "base_temperature"):
        # Contrast rows: every view of every image, through every branch (SelfCon's exits plus its backbone).
        rows = train.batch_size * len(method_class.views(config)) * (1 + len(getattr(params, "exits", [])))
        collapsed = math.log(rows - 1) * params.temperature / params.base_temperature
    print(
        f"{config.method.name}: batch {train.batch_size}, {len(loader)} steps per epoch, peak lr {rates.max():.4g}"
        + (f", loss of identical embeddings {collapsed:.4f}" if collapsed is not None else "")
    )
    step, epoch = 0, 0
    while step < args.steps:
        loader.set_epoch(epoch)
        for raw in loader:
            batch = batch_to_device(raw, torch.device("cpu"), False)
            info = StepInfo(epoch, step, len(rates))
            losses = train_step(method, method, optimizer, scaler, batch, info, float(rates[step]), dtype)
            step += 1
            if step % args.every == 0 or step == 1:
                backbone_spread, projected_spread = spreads(method, probe_images)
                projected = f"  projected cos {projected_spread:.3f}" if projected_spread is not None else ""
                print(
                    f"step {step:5d} lr {rates[step - 1]:.4f} loss {float(losses['loss']):.4f}  "
                    f"backbone cos {backbone_spread:.3f}{projected}",
                    flush=True,
                )
            if step >= args.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
