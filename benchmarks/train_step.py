"""Print images/s and peak memory of one full training step (forward, backward, optimiser, state update) per method.

One process, no data loading in the timed part: each method's inputs are made once by running its
own declared views on random images, so a new method is benchmarked without editing this file.
Every step is ``pipeline.step.train_step``, the function the Ray training loop calls. ResNet-18 at
32 px, batch 256 by default, with the CIFAR stem and the standard stem. Needs torch and the project's
light dependencies (numpy, Pillow, pydantic, PyYAML), not Ray, MLflow or FAISS: it runs on a bare GPU
node (``tests/test_step_benchmark.py`` checks it with those three unimportable). Each line also gives the
step's FLOPs per image (matmuls and convolutions of forward and backward, counted by
``torch.utils.flop_counter``), the TFLOP/s achieved and, on a known GPU (or with ``--peak-tflops``), the
model-FLOP utilisation against its dense bf16 peak.
Each measurement runs in a fresh process, so its memory figure is its own: the process's peak RSS
growth on CPU, the peak allocated CUDA memory on a GPU. On CUDA, ``--amp bf16 --channels-last``
measure the fast path. ``--queue-sizes`` measures queue-based methods at each length and
``--baseline`` prints each method's step-time ratio to the baselines at the same stem and queue length
(medians over ``--repeats`` interleaved measurements). A method may carry its own parameters as
``name:key=value,key=value`` (keys under ``method.``), e.g. ``dscl:pbsd.enabled=false``.
Examples: ``python benchmarks/train_step.py --methods moco supcon --steps 5``;
``python benchmarks/train_step.py --methods moco ascl --queue-sizes 4096 65536 --stems cifar --repeats 3``;
``python benchmarks/train_step.py --methods moco dscl:pbsd.enabled=false dscl --baseline moco dscl:pbsd.enabled=false``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import yaml
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import ExperimentConfig, load_config, with_overrides
from pipeline.method_configs import method_config_class
from pipeline.methods import Batch, Method, MethodContext, StepInfo, get_method, method_names
from pipeline.optim import build_optimizer
from pipeline.step import autocast_dtype, batch_to_device, train_step

NUM_CLASSES = 10
# Dense bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched against the device name in
# order (the PCIe H100 before the SXM one); --peak-tflops overrides them.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A6000", 154.8),
    ("A10", 125.0),
    ("L4", 121.0),
)


def bf16_peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Return the device's dense bf16 peak in TFLOP/s: ``override``, else the data-sheet figure, else None."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def method_inputs(method_class: type[Method], config: ExperimentConfig, device: torch.device) -> Batch:
    """Return one batch of the method's declared views of random images, collated and on ``device``."""
    transform = method_class.train_transform(config)
    rng = np.random.default_rng(0)
    size = config.data.image_size
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
        for _ in range(config.train.batch_size)
    ]
    views = default_collate([transform(image) for image in images])
    labels = torch.as_tensor(rng.integers(0, NUM_CLASSES, size=config.train.batch_size))
    indices = torch.arange(config.train.batch_size)
    return batch_to_device((views, labels, indices), device, config.train.channels_last)


def current_rss_mb() -> float:
    """Return this process's resident memory in MiB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def parse_method(spec: str) -> tuple[str, dict[str, object]]:
    """Return the method name and its ``method.*`` overrides from ``name[:key=value,...]``."""
    name, _, settings = spec.partition(":")
    overrides: dict[str, object] = {}
    for setting in filter(None, settings.split(",")):
        key, equals, value = setting.partition("=")
        if not equals:
            raise SystemExit(f"--methods {spec!r}: expected key=value after ':', got {setting!r}")
        overrides[f"method.{key}"] = yaml.safe_load(value)
    return name, overrides


def measure(
    method_name: str, cifar_stem: bool, queue_size: int | None, args: argparse.Namespace
) -> tuple[float, float, float]:
    """Return images/s of ``args.steps`` timed steps after ``args.warmup`` untimed ones, peak memory in MiB and FLOPs.

    The FLOPs are those of one whole step (forward and backward), counted once before the timed steps
    by ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplications and convolutions, the
    convention model-FLOP utilisation uses (element-wise work and the optimiser are not counted).
    """
    device = torch.device(args.device)
    rss_before = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    overrides = {
        "model.backbone": "resnet18",
        "model.cifar_stem": cifar_stem,
        "model.batch_norm": "plain",
        "data.image_size": args.size,
        "train.batch_size": args.batch_size,
        "train.amp": args.amp,
        "train.channels_last": args.channels_last,
    }
    if queue_size is not None:
        overrides["method.queue_size"] = queue_size
    method_name, method_overrides = parse_method(method_name)
    config = with_overrides(load_config(None, [f"method.name={method_name}"]), {**overrides, **method_overrides})
    method_class = get_method(method_name)
    method_class.validate(config, world_size=1)
    total = args.warmup + args.steps
    context = MethodContext(config, 0, 1, NUM_CLASSES, total, method_class.batch_norm(config, 1))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    method = method_class(context).to(device, memory_format=memory_format)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    dtype = autocast_dtype(args.amp)
    batch = method_inputs(method_class, config, device)

    def step(index: int) -> None:
        train_step(method, method, optimizer, scaler, batch, StepInfo(0, index, total), config.optim.lr, dtype)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = float(counter.get_total_flops())
    for index in range(1, args.warmup):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(args.warmup, total):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return args.steps * args.batch_size / (time.perf_counter() - started), memory, flops


def queue_sizes(method_name: str, args: argparse.Namespace) -> list[int | None]:
    """Return the queue lengths to measure ``method_name`` at (its default when it has no queue or none given)."""
    if args.queue_sizes and "queue_size" in method_config_class(parse_method(method_name)[0]).model_fields:
        return list(args.queue_sizes)
    return [None]


def main() -> None:
    """Parse arguments and print one line per (method, stem, queue length), then ratios to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (at least 1: the first counts FLOPs)")
    parser.add_argument("--stems", choices=["both", "cifar", "standard"], default="both")
    parser.add_argument("--queue-sizes", nargs="+", type=int, default=None, help="for methods with a queue")
    parser.add_argument(
        "--baseline", nargs="+", default=["moco"], help="methods the step-time ratios are printed against"
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved measurements per line (median shown)")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for model-FLOP utilisation")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first untimed step is the one whose FLOPs are counted")
    device = torch.device(args.device)
    peak = bf16_peak_tflops(device, args.peak_tflops)
    memory_kind = "peak CUDA allocated" if device.type == "cuda" else "peak RSS growth"
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else torch.get_num_threads()} "
        f"{'GPU' if device.type == 'cuda' else 'threads'}), ResNet-18, {args.size} px, batch {args.batch_size}, "
        f"amp {args.amp}, channels_last {args.channels_last}, median of {args.repeats}"
    )
    stems = {"both": (True, False), "cifar": (True,), "standard": (False,)}[args.stems]
    cases = [
        (method_name, cifar_stem, queue_size)
        for method_name in args.methods or method_names()
        for cifar_stem in stems
        for queue_size in queue_sizes(method_name, args)
    ]
    measured: dict[tuple[str, bool, int | None], list[tuple[float, float, float]]] = defaultdict(list)
    spawn = multiprocessing.get_context("spawn")
    # Interleaving the repeats spreads slow drifts of the machine (thermal, other load) over every case alike.
    for _ in range(args.repeats):
        for case in cases:
            with spawn.Pool(1) as pool:
                measured[case].append(pool.apply(measure, (*case, args)))
    rates = {case: statistics.median(rate for rate, _, _ in values) for case, values in measured.items()}
    for case in cases:
        method_name, cifar_stem, queue_size = case
        stem = "cifar stem   " if cifar_stem else "standard stem"
        queue = f"queue {queue_size:6d}" if queue_size is not None else " " * 12
        memory = max(memory for _, memory, _ in measured[case])
        step_flops = measured[case][0][2]
        achieved = step_flops / args.batch_size * rates[case] / 1e12  # TFLOP/s
        utilisation = f"  MFU {100 * achieved / peak:5.1f}% of {peak:.0f}" if peak else ""
        print(
            f"{method_name:24s} {stem} {queue}  {rates[case]:8.1f} images/s  {memory:8.0f} MiB {memory_kind}  "
            f"{step_flops / args.batch_size / 1e9:6.2f} GFLOP/img  {achieved:7.3f} TFLOP/s{utilisation}"
        )
    for reference in args.baseline:
        for method_name, cifar_stem, queue_size in cases:
            baseline = (reference, cifar_stem, queue_size)
            if method_name == reference or baseline not in rates:
                continue
            ratio = rates[baseline] / rates[(method_name, cifar_stem, queue_size)]
            where = f"{'cifar' if cifar_stem else 'standard'} stem" + (f", queue {queue_size}" if queue_size else "")
            print(f"{method_name} / {reference} step time ({where}): x{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
