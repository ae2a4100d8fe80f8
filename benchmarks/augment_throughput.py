"""Print images/s of one method's training views made per image with PIL (the loader path) and per batch.

Both paths run in this process on the same random images, alternating, so a shared machine's load falls on
both alike; the figures are medians over ``--repeats``. The PIL path is what one DataLoader worker does per
image (``data.augment_on: loader``), without decoding or collation; the batched path is what the training
loop does per batch on its device (``data.augment_on: device``), from the uint8 batch to every view.
Usage: ``python benchmarks/augment_throughput.py [--method moco] [--size 32] [--batch-size 128] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import PIL.Image
import torch

from pipeline.config import load_config
from pipeline.data.batched_views import BatchedViews
from pipeline.methods import get_method


def parse_args() -> argparse.Namespace:
    """Return the parsed command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="moco")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per repeat and path")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the batched path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def main() -> None:
    """Time both paths, alternating, and print their medians and ratio."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(None, [f"method.name={args.method}", f"data.image_size={args.size}"])
    recipes = get_method(args.method).views(config)
    per_image = get_method(args.method).train_transform(config)
    batched = BatchedViews(recipes, config.data)
    device = torch.device(args.device)
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch_size, args.size, args.size, 3), dtype=np.uint8)
    images = [PIL.Image.fromarray(image) for image in pixels]
    batch = torch.as_tensor(pixels).permute(0, 3, 1, 2).contiguous().to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def pil_rate() -> float:
        started = time.perf_counter()
        for _ in range(args.batches):
            for image in images:
                per_image(image)
        return args.batches * args.batch_size / (time.perf_counter() - started)

    def batched_rate() -> float:
        synchronize()
        started = time.perf_counter()
        for _ in range(args.batches):
            batched(batch, generator)
        synchronize()
        return args.batches * args.batch_size / (time.perf_counter() - started)

    batched_rate()  # warm-up: first calls allocate and (on CUDA) load kernels
    rates: dict[str, list[float]] = {"pil": [], "batched": []}
    for _ in range(args.repeats):
        rates["pil"].append(pil_rate())
        rates["batched"].append(batched_rate())
    pil, fast = statistics.median(rates["pil"]), statistics.median(rates["batched"])
    print(
        f"{args.method} views {sorted(recipes)}, {args.size} px, batch {args.batch_size}, median of {args.repeats}: "
        f"PIL per image (1 process) {pil:.0f} images/s; batched on {device} ({args.threads} threads) {fast:.0f} "
        f"images/s; x{fast / pil:.1f}"
    )


if __name__ == "__main__":
    main()
