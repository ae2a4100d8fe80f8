"""Print the step time of each in-batch method on 2 gloo workers with its global-batch gathers and without them.

Two processes (one thread each, plain torch.distributed, no Ray) train the same method under DDP, each
on its half of the global batch, as the Ray training loop does. "global" is the shipped behaviour:
every in-batch contrast gathers the embeddings it compares from both workers. "per worker" is the old
behaviour each worker's loss had before the gathers existed: ``contrast_scope: worker`` where the method
has that switch (SCL, DSCL, HCSC), elsewhere the method module's gather functions replaced by the
identity for the measurement (and CPC's predictions scored from image 0 of the local targets). The
figures are medians over ``--repeats`` interleaved timings of ``--steps`` steps; the gather cost is the
global step time over the per-worker one.
Example: ``python benchmarks/gather_cost.py --methods supcon simclr dscl --batch-size 128 --width 16``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from train_step import method_inputs

from pipeline.config import load_config, with_overrides
from pipeline.losses import cpc_infonce
from pipeline.methods import Batch, StepInfo, build_method, get_method
from pipeline.training.optim import build_optimizer
from pipeline.training.step import train_step

GATHERING = ("supcon", "simclr", "supcon_s", "selfcon", "ascl_byol", "scl", "dscl", "dim", "cpc")
SCOPED = ("scl", "dscl", "hcsc")
# Where each method module holds the gathers of its in-batch contrast (the MoCo queue's gather stays).
GATHER_SITES = {
    "pipeline.methods.common": ("all_gather_with_grad", "concat_all_gather"),
    "pipeline.methods.ascl.method": ("all_gather_with_grad", "concat_all_gather"),
    "pipeline.methods.dim.method": ("all_gather_with_grad",),
    "pipeline.methods.cpc.method": ("all_gather_with_grad",),
}


def identity(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` unchanged (the per-worker stand-in for a gather)."""
    return tensor


def local_cpc_infonce(targets: torch.Tensor, predictions: torch.Tensor, first_step: int, first_image: int) -> Any:
    """Return CPC's loss of the local predictions against the local targets (the per-worker stand-in)."""
    return cpc_infonce(targets, predictions, first_step)


def local_share(batch: Batch, rank: int, world: int) -> Batch:
    """Return worker ``rank``'s contiguous share of the global batch."""

    def cut(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        rows = value.shape[0] // world
        return value[rank * rows : (rank + 1) * rows]

    return Batch(views=cut(batch.views), labels=cut(batch.labels), indices=cut(batch.indices))


def time_steps(name: str, scope: str, rank: int, world: int, args: argparse.Namespace) -> float:
    """Return the seconds per step of ``args.steps`` timed steps of method ``name`` on this worker."""
    overrides: dict[str, Any] = {
        "model.width": args.width,
        "model.cifar_stem": True,
        "model.batch_norm": "plain",
        "data.image_size": args.size,
        "train.batch_size": args.batch_size,
    }
    config = load_config(None, [f"method.name={name}"])
    if name in SCOPED:
        overrides["method.contrast_scope"] = scope
    if name == "cpc":
        overrides["data.image_size"] = 32
    config = with_overrides(config, overrides)
    method_class = get_method(name)
    torch.manual_seed(0)
    method = build_method(config, 10, rank, world)
    model = DistributedDataParallel(method)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = local_share(method_inputs(method_class, config, torch.device("cpu")), rank, world)
    with ExitStack() as stack:
        if scope == "worker" and name not in SCOPED:
            for module, names in GATHER_SITES.items():
                for attribute in names:
                    stack.enter_context(mock.patch(f"{module}.{attribute}", identity))
            stack.enter_context(mock.patch("pipeline.methods.cpc.method.cpc_infonce", local_cpc_infonce))

        def step(index: int) -> None:
            train_step(model, method, optimizer, scaler, batch, StepInfo(0, index, args.steps), 0.01, None)

        step(0)
        dist.barrier()
        started = time.perf_counter()
        for index in range(args.steps):
            step(index + 1)
        dist.barrier()
        return (time.perf_counter() - started) / args.steps


def worker(rank: int, world: int, args: argparse.Namespace, init_file: str, out_dir: str) -> None:
    """Time every (method, scope) pair ``args.repeats`` times, interleaved; rank 0 saves the timings."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        timings: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name in args.methods:
                for scope in ("global", "worker"):
                    timings.setdefault(f"{name}/{scope}", []).append(time_steps(name, scope, rank, world, args))
        if rank == 0:
            torch.save(timings, Path(out_dir) / "timings.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Parse arguments, run the 2-worker timings and print one line per method."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(GATHERING))
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (64 per worker)")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is torchvision's)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(2, args, str(Path(folder) / "rendezvous"), folder), nprocs=2, join=True)
        timings = torch.load(Path(folder) / "timings.pt", weights_only=True)
    print(
        f"2 gloo workers x 1 thread, ResNet-18 width {args.width} (CIFAR stem), {args.size} px, global batch "
        f"{args.batch_size}, median of {args.repeats} x {args.steps} steps"
    )
    for name in args.methods:
        global_time = statistics.median(timings[f"{name}/global"])
        worker_time = statistics.median(timings[f"{name}/worker"])
        print(
            f"{name:10s} global {global_time * 1000:8.1f} ms/step   per worker {worker_time * 1000:8.1f} ms/step   "
            f"gather cost {(global_time / worker_time - 1) * 100:+6.1f}%"
        )


if __name__ == "__main__":
    main()
