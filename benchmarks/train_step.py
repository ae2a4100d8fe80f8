"""Print images/s of one full training step (forward, backward, optimiser, queue update) per method.

One process, synthetic tensors (no data loading), ResNet-18 at 32 px, batch 256 by default,
for the CIFAR stem and the standard stem. On CUDA, ``--amp bf16 --channels-last`` measure the
fast path. Example: ``python benchmarks/train_step.py --methods moco supcon --steps 5``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import load_config, with_overrides
from pipeline.methods import MethodContext, StepInfo, get_method
from pipeline.optim import build_optimizer
from pipeline.train import autocast_dtype


def make_views(method: str, batch: int, size: int, device: torch.device, channels_last: bool) -> dict:
    """Return random input views shaped as the method's transform would produce them."""
    names = ("query", "key") if method == "moco" else ("view1", "view2")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return {
        name: torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format) for name in names
    }


def measure(method_name: str, cifar_stem: bool, args: argparse.Namespace, device: torch.device) -> float:
    """Return images/s of ``args.steps`` timed steps after ``args.warmup`` untimed ones."""
    config = with_overrides(
        load_config(None, [f"method.name={method_name}"]),
        {
            "model.backbone": "resnet18",
            "model.cifar_stem": cifar_stem,
            "model.batch_norm": "plain",
            "data.image_size": args.size,
            "train.batch_size": args.batch_size,
            "train.amp": args.amp,
        },
    )
    method = get_method(method_name)(MethodContext(config, 0, 1, 10, args.steps + args.warmup))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    dtype = autocast_dtype(args.amp)
    views = make_views(method_name, args.batch_size, args.size, device, args.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    total = args.warmup + args.steps

    def step(index: int) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = method(views, labels, StepInfo(0, index, total))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        method.on_step_end()

    for index in range(args.warmup):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(args.warmup, total):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    """Parse arguments and print one line per (method, stem)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["moco", "supcon"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else torch.get_num_threads()} "
        f"{'GPU' if device.type == 'cuda' else 'threads'}), ResNet-18, {args.size} px, batch {args.batch_size}, "
        f"amp {args.amp}, channels_last {args.channels_last}"
    )
    for method_name in args.methods:
        for cifar_stem in (True, False):
            rate = measure(method_name, cifar_stem, args, device)
            stem = "cifar stem   " if cifar_stem else "standard stem"
            print(f"{method_name:8s} {stem}  {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
