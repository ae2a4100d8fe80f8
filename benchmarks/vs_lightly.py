"""Print the project's training step against lightly's, side by side in one process, alternating steps.

MoCo v2 and SimCLR on torchvision's ResNet-18 (the standard network and stem, not the CIFAR one), batch 256,
32 px, 2 CPU threads by default. The project's side is ``pipeline.training.step.train_step`` with the run's defaults
(``train.channels_last``, ``train.compile``, ``train.amp`` resolved on the device, MoCo's split batch norm,
the configured optimiser); a MoCo queue of 4096 on both sides. lightly's side follows its documented usage
(``examples/pytorch/moco.py`` and ``simclr.py``): ``nn.Sequential`` of torchvision's ResNet-18 without its
classifier, ``MoCoProjectionHead`` / ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss`` (with
``memory_bank_size=(4096, 128)`` for MoCo), ``update_momentum`` of backbone and head at 0.99, SGD at lr 0.06, one
forward per view. Both sides train on the same random images; each round times one project step, then one
lightly step, so drifts of the machine touch both alike. Prints the median images/s of each and their ratio.
Needs torch and lightly (``pip install -e '.[bench]'``), not Ray, MLflow or FAISS; exits 2 without lightly.
Example: ``python benchmarks/vs_lightly.py --steps 10``; a lever off: ``... --set train.compile=false``; lightly
in bf16 autocast too (equal numerics): ``... --lightly-amp bf16``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from pipeline.config import load_config, with_overrides
from pipeline.methods import Batch, StepInfo, build_method
from pipeline.training.compilation import compile_networks
from pipeline.training.optim import build_optimizer
from pipeline.training.step import autocast_dtype, batch_to_device, train_step

QUEUE_SIZE = 4096
NUM_CLASSES = 10
VIEW_NAMES = {"moco": ("query", "key"), "simclr": ("view1", "view2")}


def project_step(method_name: str, images: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> Callable:
    """Return a function running one of the project's training steps of ``method_name`` on ``images``."""
    overrides: dict[str, object] = {
        "model.backbone": "resnet18",
        "model.cifar_stem": False,
        "data.image_size": args.size,
        "train.batch_size": args.batch_size,
    }
    if method_name == "moco":
        overrides["method.queue_size"] = QUEUE_SIZE
    config = with_overrides(load_config(None, [f"method.name={method_name}", *args.set]), overrides)
    device = torch.device("cpu")
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    method = build_method(config, NUM_CLASSES).to(device, memory_format=memory_format)
    compile_networks(method, config.train.compile)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    dtype = autocast_dtype(config.train.amp, device)
    views = dict(zip(VIEW_NAMES[method_name], images, strict=True))
    labels = torch.zeros(args.batch_size, dtype=torch.long)
    batch: Batch = batch_to_device((views, labels, torch.arange(args.batch_size)), device, config.train.channels_last)
    print(
        f"project {method_name}: channels_last {config.train.channels_last}, compile {config.train.compile}, "
        f"amp {config.train.amp} ({dtype}), batch norm {method.context.batch_norm}, lr {config.optim.lr}"
    )
    counter = iter(range(1_000_000))

    def step() -> None:
        train_step(
            method, method, optimizer, scaler, batch, StepInfo(0, next(counter), 1_000_000), config.optim.lr, dtype
        )

    return step


def lightly_step(method_name: str, images: tuple[torch.Tensor, torch.Tensor], amp: str) -> Callable:
    """Return a function running one step of lightly's documented MoCo or SimCLR loop on ``images``.

    lightly's examples train in float32; ``amp`` bf16 wraps the same forward in CPU autocast, which a lightly user
    would add by hand, so that a ratio can be read at equal numerics too.
    """
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")

    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    first, second = images
    if method_name == "simclr":
        head: nn.Module = SimCLRProjectionHead(512, 512, 128)
        model = nn.Sequential(backbone, nn.Flatten(start_dim=1), head)
        criterion = NTXentLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.06)

        def simclr() -> None:
            with autocast:
                loss = criterion(model(first), model(second))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return simclr
    head = MoCoProjectionHead(512, 512, 128)
    backbone_momentum, head_momentum = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(backbone_momentum)
    deactivate_requires_grad(head_momentum)
    criterion = NTXentLoss(memory_bank_size=(QUEUE_SIZE, 128))
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.06)

    def moco() -> None:
        update_momentum(backbone, backbone_momentum, m=0.99)
        update_momentum(head, head_momentum, m=0.99)
        with autocast:
            query = head(backbone(first).flatten(start_dim=1))
            key = head_momentum(backbone_momentum(second).flatten(start_dim=1)).detach()
            loss = criterion(query, key)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return moco


def timed(step: Callable[[], None]) -> float:
    """Return the seconds one call of ``step`` takes."""
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    """Parse arguments, then print each method's images/s on both sides and the project's ratio to lightly."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", choices=sorted(VIEW_NAMES), default=["moco", "simclr"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each side per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation included)")
    parser.add_argument("--set", nargs="*", default=[], help="the project's config overrides, e.g. train.compile=true")
    parser.add_argument(
        "--lightly-amp", choices=["off", "bf16"], default="off", help="lightly's numerics (off: its examples')"
    )
    args = parser.parse_args()
    try:
        import lightly  # noqa: F401
    except ImportError as error:
        print(
            f"lightly is not installed ({error}); install the bench extra: pip install -e '.[bench]'", file=sys.stderr
        )
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    print(
        f"CPU, {args.threads} threads, torchvision ResNet-18, {args.size} px, batch {args.batch_size}, "
        f"lightly autocast {args.lightly_amp}"
    )
    for method_name in args.methods:
        generator = torch.Generator().manual_seed(0)
        shape = (args.batch_size, 3, args.size, args.size)
        images = (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
        torch.manual_seed(0)
        sides = {
            "project": project_step(method_name, images, args),
            "lightly": lightly_step(method_name, images, args.lightly_amp),
        }
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        first_round = {name: timed(step) for name, step in sides.items()}
        for _ in range(args.warmup - 1):
            for step in sides.values():
                step()
        for _ in range(args.steps):
            for name, step in sides.items():
                seconds[name].append(timed(step))
        rates = {name: args.batch_size / statistics.median(values) for name, values in seconds.items()}
        print(
            f"{method_name}: project {rates['project']:.1f} images/s, lightly {rates['lightly']:.1f} images/s, "
            f"ratio x{rates['project'] / rates['lightly']:.3f} (median of {args.steps} alternating steps; first step "
            f"project {first_round['project']:.1f} s, lightly {first_round['lightly']:.1f} s)"
        )


if __name__ == "__main__":
    main()
