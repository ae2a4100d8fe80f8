"""Print the wall time of the linear probe on cached features (the ``features`` protocol's training part).

Random features standing in for a CIFAR-size probe: 50,000 x 512 into 10 classes by default, on the
GPU when present. Example: ``python benchmarks/linear_probe.py --epochs 100``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.evaluation.linear import ProbeSettings, train_linear_probe


def main() -> None:
    """Time SGD and L-BFGS probes and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(args.classes, (args.samples,), generator=generator)
    centres = torch.randn(args.classes, args.dim, generator=generator)
    features = (centres[labels] + 3 * torch.randn(args.samples, args.dim, generator=generator)).to(device)
    labels = labels.to(device)
    print(f"device {device}, {args.samples} x {args.dim} features, {args.classes} classes, {args.epochs} epochs")
    for optimizer in ("sgd", "lbfgs"):
        settings = ProbeSettings(optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        probe = train_linear_probe(features, labels, args.classes, settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        with torch.no_grad():
            accuracy = (probe(features).argmax(dim=1) == labels).float().mean().item() * 100
        print(f"{optimizer:6s} {seconds:7.2f} s   train accuracy {accuracy:.1f}%")


if __name__ == "__main__":
    main()
