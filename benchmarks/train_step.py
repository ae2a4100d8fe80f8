"""Print images/s and peak memory of one full training step (forward, backward, optimiser, state update) per method.

One process, no data loading in the timed part: each method's inputs are made once by running its
own declared views on random images, so a new method is benchmarked without editing this file.
Every step is ``pipeline.training.step.train_step``, the function the Ray training loop calls. ResNet-18 at
32 px, batch 256 by default, with the CIFAR stem and the standard stem. Needs torch and the project's
light dependencies (numpy, Pillow, pydantic, PyYAML), not Ray, MLflow or FAISS: it runs on a bare GPU
node (``tests/test_step_benchmark.py`` checks it with those three unimportable). Each line also gives the
step's FLOPs per image (matmuls and convolutions of forward and backward, counted by
``torch.utils.flop_counter``), the TFLOP/s achieved and, on a known GPU (or with ``--peak-tflops``), the
model-FLOP utilisation against its dense bf16 peak.
Each measurement runs in a fresh process, so its memory figure is its own: the process's peak RSS
growth on CPU, the peak allocated CUDA memory on a GPU. Numerics follow the run's defaults (``train.amp``,
``train.channels_last``, ``train.compile``) unless ``--amp``, ``--channels-last on|off`` or ``--compile on|off``
set them. ``--levers`` also measures each method with each lever flipped (channels-last, compile, autocast (off
where the defaults resolve to bf16 on the device, bf16 where they resolve to off), and for
methods with 5-D image views such as CPC's patch grid, those views left in the plain layout) and prints the
ratio of the defaults' images/s to each. A compiled measurement's first step, compilation included, is
printed as its cold start; ``--fresh-compile-cache`` starts the invocation with an empty inductor cache, so
the first repeat of each case pays the whole compilation (later repeats reuse that cache).
``--queue-sizes`` measures queue-based methods at each length and
``--baseline`` prints each method's step-time ratio to the baselines at the same stem and queue length
(medians over ``--repeats`` interleaved measurements). A method may carry its own parameters as
``name:key=value,key=value`` (keys under ``method.``), e.g. ``dscl:pbsd.enabled=false``.
On a GPU node with torch alone, every method with the run's defaults (bf16 autocast on CUDA) and each lever:
``python benchmarks/train_step.py --stems both --levers --steps 20 --warmup 5``.
The quickstart network on a CPU at 1 and 2 threads: ``python benchmarks/train_step.py --quickstart --levers
--threads 1 2 --repeats 3 --fresh-compile-cache``.
``--augment-on device`` counts the batched augmentation (``data.augment_on: device``) in every timed step: the
views are made afresh from a uint8 batch on the device before each step (the FLOPs stay the model's).
Examples: ``python benchmarks/train_step.py --methods moco supcon --steps 5``;
``python benchmarks/train_step.py --methods moco ascl --queue-sizes 4096 65536 --stems cifar --repeats 3``;
``python benchmarks/train_step.py --methods moco dscl:pbsd.enabled=false dscl --baseline moco dscl:pbsd.enabled=false``.
A timm backbone in place of the ResNet (needs ``timm``): ``python benchmarks/train_step.py --methods moco --stems cifar
--backbone timm:vit_tiny_patch16_224 --timm-kwargs '{patch_size: 4, embed_dim: 96, depth: 6, num_heads: 3}'``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import yaml
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import ExperimentConfig, load_config, with_overrides
from pipeline.data.batched_views import BatchedViews
from pipeline.methods import Batch, Method, StepInfo, build_method, get_method, method_names
from pipeline.methods.registry import method_config_class
from pipeline.training.compilation import compile_networks
from pipeline.training.optim import build_optimizer
from pipeline.training.step import autocast_dtype, batch_to_device, to_device, train_step

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


def method_inputs(
    method_class: type[Method], config: ExperimentConfig, device: torch.device, grid_channels_last: bool = True
) -> Batch:
    """Return one batch of the method's declared views of random images, collated and on ``device``.

    ``grid_channels_last`` off leaves 5-D image groups (patch grids) in the plain layout under channels-last.
    """
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
    batch = batch_to_device((views, labels, indices), device, config.train.channels_last)
    if not grid_channels_last:
        batch.views = plain_image_groups(batch.views)
    return batch


def device_views(
    method_class: type[Method], config: ExperimentConfig, device: torch.device, batch: Batch, grid_channels_last: bool
) -> Callable[[], Batch]:
    """Return a function making ``batch``'s views afresh from random uint8 images on ``device``, as the loop does."""
    size = config.data.image_size
    shape = (config.train.batch_size, 3, size, size)
    images = torch.as_tensor(np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8), device=device)
    views = BatchedViews(method_class.views(config), config.data)
    generator = torch.Generator(device=device).manual_seed(0)

    def make() -> Batch:
        made = to_device(views(images, generator), device, config.train.channels_last)
        return Batch(made if grid_channels_last else plain_image_groups(made), batch.labels, batch.indices)

    return make


def plain_image_groups(views: Any) -> Any:
    """Return ``views`` with every 5-D image group made contiguous in the plain (channels-first) layout."""
    if isinstance(views, dict):
        return {key: plain_image_groups(value) for key, value in views.items()}
    return views.contiguous() if views.dim() == 5 else views


def has_image_groups(views: Any) -> bool:
    """Return whether ``views`` (a tensor or nested dict) holds a 5-D image group ``[B, N, C, H, W]``."""
    if isinstance(views, dict):
        return any(has_image_groups(value) for value in views.values())
    return views.dim() == 5


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


@dataclass(frozen=True)
class Case:
    """One line of the table: a method at a stem, queue length and thread count, under one set of levers."""

    method: str
    cifar_stem: bool
    queue_size: int | None
    threads: int | None
    channels_last: bool
    compile: bool
    grid_channels_last: bool = True
    amp: str | None = None  # train.amp of this case; None: --amp or the run's default
    variant: str = "defaults"


@dataclass(frozen=True)
class Measurement:
    """What one measurement gives: images/s, memory in MiB, FLOPs of one step, first-step seconds."""

    rate: float
    memory: float
    flops: float
    first_step: float


def experiment_config(case: Case, args: argparse.Namespace) -> ExperimentConfig:
    """Return the config of ``case``: the benchmark's backbone (ResNet-18 at its width), size, batch and batch norm."""
    overrides: dict[str, object] = {
        "model.backbone": args.backbone,
        "model.cifar_stem": case.cifar_stem,
        "model.width": args.width,
        "model.timm_kwargs": yaml.safe_load(args.timm_kwargs) if args.timm_kwargs else {},
        "data.image_size": args.size,
        "train.batch_size": args.batch_size,
        "train.channels_last": case.channels_last,
    }
    if args.batch_norm is not None:
        overrides["model.batch_norm"] = args.batch_norm
    if args.bn_splits is not None:
        overrides["model.bn_splits"] = args.bn_splits
    if (case.amp or args.amp) is not None:
        overrides["train.amp"] = case.amp or args.amp
    if case.queue_size is not None:
        overrides["method.queue_size"] = case.queue_size
    if args.local_crops is not None:
        overrides["method.local_crops"] = yaml.safe_load(args.local_crops)
    method_name, method_overrides = parse_method(case.method)
    return with_overrides(load_config(None, [f"method.name={method_name}"]), {**overrides, **method_overrides})


def measure(case: Case, args: argparse.Namespace) -> Measurement:
    """Return images/s of ``args.steps`` timed steps after the untimed ones, peak memory, FLOPs and the first step.

    The FLOPs are those of one whole step (forward and backward), counted eagerly before anything is
    compiled by ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplications and convolutions, the
    convention model-FLOP utilisation uses (element-wise work and the optimiser are not counted). The first
    step after that is timed on its own: with compile on it includes the compilation (the cold start).
    """
    if case.threads is not None:
        torch.set_num_threads(case.threads)
    device = torch.device(args.device)
    rss_before = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = experiment_config(case, args)
    method_class = get_method(parse_method(case.method)[0])
    method_class.validate(config, world_size=1)
    total = 1 + args.warmup + args.steps
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    method = build_method(config, NUM_CLASSES).to(device, memory_format=memory_format)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    dtype = autocast_dtype(config.train.amp, device)
    batch = method_inputs(method_class, config, device, case.grid_channels_last)
    make_views = device_views(method_class, config, device, batch, case.grid_channels_last)

    def step(index: int, augment: bool = args.augment_on == "device") -> None:
        inputs = make_views() if augment else batch
        train_step(method, method, optimizer, scaler, inputs, StepInfo(0, index, total), config.optim.lr, dtype)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        step(0, augment=False)
    flops = float(counter.get_total_flops())
    compile_networks(method, case.compile)
    synchronize()
    started = time.perf_counter()
    step(1)
    synchronize()
    first_step = time.perf_counter() - started
    for index in range(2, 1 + args.warmup):
        step(index)
    synchronize()
    started = time.perf_counter()
    for index in range(1 + args.warmup, total):
        step(index)
    synchronize()
    rate = args.steps * args.batch_size / (time.perf_counter() - started)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return Measurement(rate, memory, flops, first_step)


def queue_sizes(method_name: str, args: argparse.Namespace) -> list[int | None]:
    """Return the queue lengths to measure ``method_name`` at (its default when it has no queue or none given)."""
    if args.queue_sizes and "queue_size" in method_config_class(parse_method(method_name)[0]).model_fields:
        return list(args.queue_sizes)
    return [None]


def lever_cases(base: Case, args: argparse.Namespace) -> list[Case]:
    """Return ``base`` and, with ``--levers``, ``base`` with each lever flipped (grid layout: under channels-last)."""
    cases = [base]
    if not args.levers:
        return cases
    for lever in ("channels_last", "compile"):
        flipped = not getattr(base, lever)
        cases.append(replace(base, **{lever: flipped}, variant=f"{lever} {'on' if flipped else 'off'}"))
    config = experiment_config(base, args)
    autocast_on = autocast_dtype(config.train.amp, torch.device(args.device)) is not None
    cases.append(replace(base, amp="off" if autocast_on else "bf16", variant=f"amp {'off' if autocast_on else 'bf16'}"))
    method_class = get_method(parse_method(base.method)[0])
    if base.channels_last and has_image_groups(method_inputs(method_class, config, torch.device("cpu")).views):
        cases.append(replace(base, grid_channels_last=False, variant="grid channels_last off"))
    return cases


def switch(value: str | None, default: bool) -> bool:
    """Return the on/off command-line ``value`` as a bool, ``default`` when it was not given."""
    return default if value is None else value == "on"


def main() -> None:
    """Parse arguments and print one line per case, then the levers' and the baselines' ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: the standard network)")
    parser.add_argument("--backbone", default="resnet18", help="model.backbone, e.g. timm:vit_tiny_patch16_224")
    parser.add_argument("--timm-kwargs", default=None, help="model.timm_kwargs as YAML, e.g. '{patch_size: 4}'")
    parser.add_argument(
        "--local-crops",
        default=None,
        help="method.local_crops as YAML for multi-crop, e.g. '[{size: 16, scale: [0.05, 0.4], count: 2}]'",
    )
    parser.add_argument("--batch-norm", default="plain", help="model.batch_norm (default plain; 'run' keeps auto)")
    parser.add_argument("--bn-splits", type=int, default=None, help="model.bn_splits (split batch norm)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (at least 1: the first counts FLOPs)")
    parser.add_argument("--stems", choices=["both", "cifar", "standard"], default="both")
    parser.add_argument("--queue-sizes", nargs="+", type=int, default=None, help="for methods with a queue")
    parser.add_argument(
        "--baseline", nargs="+", default=["moco"], help="methods the step-time ratios are printed against"
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved measurements per line (median shown)")
    parser.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default=None, help="default: train.amp")
    parser.add_argument("--channels-last", choices=["on", "off"], default=None, help="default: train.channels_last")
    parser.add_argument("--compile", choices=["on", "off"], default=None, help="default: train.compile")
    parser.add_argument("--levers", action="store_true", help="also measure each lever flipped; print the ratios")
    parser.add_argument("--threads", nargs="+", type=int, default=None, help="CPU thread counts (default: torch's)")
    parser.add_argument("--fresh-compile-cache", action="store_true", help="start with an empty inductor cache")
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="the quickstart's network: width 16, CIFAR stem, batch 128, split batch norm of 2, queue 1024",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--augment-on", choices=["loader", "device"], default="loader", help="device: time the batched views too"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for model-FLOP utilisation")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first untimed step counts the FLOPs, the next one compiles)")
    if args.quickstart:
        args.width, args.batch_size, args.size, args.stems, args.bn_splits = 16, 128, 32, "cifar", 2
        args.batch_norm, args.queue_sizes = "run", args.queue_sizes or [1024]
    args.batch_norm = None if args.batch_norm == "run" else args.batch_norm
    if args.fresh_compile_cache:
        # Spawned measurements inherit it: each case's first repeat compiles from nothing, later ones reuse it.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cache-")
    device = torch.device(args.device)
    defaults = load_config(None, []).train
    peak = bf16_peak_tflops(device, args.peak_tflops)
    memory_kind = "peak CUDA allocated" if device.type == "cuda" else "peak RSS growth"
    amp = args.amp or defaults.amp
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{'ResNet-18 width ' + str(args.width) if args.backbone == 'resnet18' else args.backbone}, "
        f"{args.size} px, batch {args.batch_size}, amp {amp} "
        f"({autocast_dtype(amp, device)}), views made on the {args.augment_on}, median of {args.repeats}"
    )
    stems = {"both": (True, False), "cifar": (True,), "standard": (False,)}[args.stems]
    channels_last = switch(args.channels_last, defaults.channels_last)
    compiled = switch(args.compile, defaults.compile)
    cases = [
        case
        for method_name in args.methods or method_names()
        for cifar_stem in stems
        for queue_size in queue_sizes(method_name, args)
        for threads in args.threads or [None]
        for case in lever_cases(Case(method_name, cifar_stem, queue_size, threads, channels_last, compiled), args)
    ]
    measured: dict[Case, list[Measurement]] = defaultdict(list)
    spawn = multiprocessing.get_context("spawn")
    # Interleaving the repeats spreads slow drifts of the machine (thermal, other load) over every case alike.
    for _ in range(args.repeats):
        for case in cases:
            with spawn.Pool(1) as pool:
                measured[case].append(pool.apply(measure, (case, args)))
    rates = {case: statistics.median(value.rate for value in values) for case, values in measured.items()}
    for case in cases:
        stem = "cifar stem   " if case.cifar_stem else "standard stem"
        queue = f"queue {case.queue_size:6d}" if case.queue_size is not None else " " * 12
        threads = f"{case.threads:2d} thr" if case.threads is not None else ""
        levers = f"cl {'on ' if case.channels_last else 'off'} compile {'on ' if case.compile else 'off'}"
        levers += "" if case.grid_channels_last else " grid plain"
        levers += f" amp {case.amp}" if case.amp else ""
        memory = max(value.memory for value in measured[case])
        step_flops = measured[case][0].flops
        achieved = step_flops / args.batch_size * rates[case] / 1e12  # TFLOP/s
        utilisation = f"  MFU {100 * achieved / peak:5.1f}% of {peak:.0f}" if peak else ""
        first = "/".join(f"{value.first_step:.1f}" for value in measured[case])
        print(
            f"{case.method:24s} {stem} {queue} {threads} {levers:28s} {rates[case]:8.1f} images/s  "
            f"{memory:8.0f} MiB {memory_kind}  {step_flops / args.batch_size / 1e9:6.2f} GFLOP/img  "
            f"{achieved:7.3f} TFLOP/s{utilisation}  first step {first} s"
        )
    for case in cases:
        if case.variant == "defaults":
            continue
        base = replace(
            case, channels_last=channels_last, compile=compiled, grid_channels_last=True, amp=None, variant="defaults"
        )
        ratio = rates[base] / rates[case]
        cold = statistics.median(value.first_step for value in measured[base]) if base.compile else None
        print(
            f"{case.method} defaults / {case.variant}{f' ({case.threads} threads)' if case.threads else ''}: "
            f"x{ratio:.3f} images/s" + (f"; compiled first step {cold:.1f} s (median)" if cold is not None else "")
        )
    for reference in args.baseline:
        for case in cases:
            baseline = replace(case, method=reference)
            if case.method == reference or case.variant != "defaults" or baseline not in rates:
                continue
            ratio = rates[baseline] / rates[case]
            where = f"{'cifar' if case.cifar_stem else 'standard'} stem" + (
                f", queue {case.queue_size}" if case.queue_size else ""
            )
            print(f"{case.method} / {reference} step time ({where}): x{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
