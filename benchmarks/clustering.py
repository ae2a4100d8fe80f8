"""Print the cost of HCSC's per-epoch clustering: k-means against data size, the actor round trip, the training stall.

1. ``--sizes``: wall time of the bottom-up hierarchical k-means (``pipeline.clustering``) on random
   normalised 128-d embeddings into 3000-2000-1000 prototypes (the official hierarchy) with the
   official settings (niter 20, nredo 5, at most 1000 points per centroid), on FAISS's GPU when the
   build has one, else on the CPU threads FAISS is given; then the growth exponent between sizes.
   k-means trains on at most ``1000 × N_0`` points (3M for N_0 = 3000), so up to that size the cost
   is linear in N (nredo × niter passes over the data); beyond it only the assignment pass grows.
2. ``--round-trip CONFIG``: the run's clustering actor on a local Ray, as the driver creates it:
   the momentum encoder's weights in (``ray.put`` + submission), the whole training set embedded and
   clustered on the actor, the hierarchy out (fetched by a rank); each part timed, ``--repeats`` times.
3. ``--stall CONFIG``: real pretraining runs of CONFIG (e.g. configs/hcsc_synthetic.yaml) with
   ``method.clustering.overlap`` off and on (and ``where`` actor and workers with ``--where``), read
   back from MLflow: per HCSC epoch, the time the training workers waited for the hierarchy as a
   fraction of the epoch's wall time, and the epoch time itself.
Examples: ``python benchmarks/clustering.py --sizes 50000 200000 1000000``;
``python benchmarks/clustering.py --round-trip configs/hcsc_synthetic.yaml --stall configs/hcsc_synthetic.yaml``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import ray
from mlflow import MlflowClient

from pipeline.clustering import hierarchical_kmeans
from pipeline.config import ExperimentConfig, load_config, with_overrides
from pipeline.methods import get_method
from pipeline.methods.common import build_encoder
from pipeline.runtime.cluster import ensure_ray
from pipeline.runtime.launch import pretrain
from pipeline.runtime.resources import RunResources


def embeddings(count: int, dim: int, seed: int) -> np.ndarray:
    """Return ``count`` random unit vectors of ``dim`` dimensions (float32)."""
    points = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def kmeans_growth(sizes: list[int], hierarchy: list[int], dim: int, niter: int, nredo: int) -> None:
    """Print one line per data size, then the growth exponents between consecutive sizes."""
    print(
        f"hierarchy {hierarchy}, {dim}-d, niter {niter}, nredo {nredo}, "
        f"FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} threads"
    )
    timings: list[tuple[int, float]] = []
    for count in sizes:
        result = hierarchical_kmeans(embeddings(count, dim, seed=count), hierarchy, niter=niter, nredo=nredo)
        timings.append((count, result.seconds))
        non_empty = [level.non_empty() for level in result.levels]
        print(f"N = {count:8d}: {result.seconds:7.1f} s on {result.device}, non-empty clusters {non_empty}")
    for (small, small_time), (large, large_time) in zip(timings, timings[1:], strict=False):
        exponent = math.log(large_time / small_time) / math.log(large / small)
        print(
            f"{small} -> {large}: time x{large_time / small_time:.2f} for data x{large / small:.1f} (~N^{exponent:.2f})"
        )


def round_trip(config: ExperimentConfig, repeats: int) -> None:
    """Print the clustering actor's round trip: weights in, embedding + k-means on the actor, hierarchy out."""
    ensure_ray(config.ray)
    specs = get_method(config.method.name).resources(config)
    weights = build_encoder(config.model, "plain", config.data.image_size).state_dict()
    size_mb = sum(value.numel() * value.element_size() for value in weights.values()) / 2**20
    with RunResources(specs, "benchmark-round-trip") as handles:
        actor = handles["clustering"]
        device = ray.get(actor.device_name.remote())
        print(f"actor on {device}, weights {size_mb:.1f} MB, hierarchy {config.method.hierarchy}")
        for repeat in range(repeats):
            started = time.perf_counter()
            ray.get(actor.submit_weights.remote(repeat, ray.put(weights)))
            sent = time.perf_counter() - started
            result = ray.get(actor.result.remote(repeat))
            total = time.perf_counter() - started
            fetch_started = time.perf_counter()
            ray.get(actor.result.remote(repeat))
            fetch = time.perf_counter() - fetch_started
            print(
                f"  round trip {total:6.2f} s: weights in {sent * 1000:6.1f} ms, "
                f"embedding {result.extract_seconds:6.2f} s, "
                f"k-means {result.hierarchy.seconds:6.2f} s, hierarchy out (a rank's fetch) {fetch * 1000:6.1f} ms"
            )


def stall(config: ExperimentConfig, modes: list[tuple[bool, str]], epochs: int, warmup: int) -> None:
    """Print, per mode, the workers' mean wait for the hierarchy as a fraction of the HCSC epochs' wall time."""
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        print(f"stall over {epochs - warmup} HCSC epochs after {warmup} warm-up, {config.data.source} data")
        for overlap, where in modes:
            overrides = {
                "method.clustering.overlap": overlap,
                "method.clustering.where": where,
                "method.warmup_epochs": warmup,
                "train.epochs": epochs,
                "eval.linear.enabled": False,
                "eval.pixel_baseline": False,
                "ray.storage_path": str(Path(folder) / "runs"),
                "ray.run_name": f"stall-{where}-{'overlap' if overlap else 'sync'}",
                "tracking.uri": uri,
            }
            result = pretrain(with_overrides(config, overrides))
            client = MlflowClient(uri)
            waits, times = (
                {metric.step: metric.value for metric in client.get_metric_history(result.mlflow_run_id, key)}
                for key in ("clustering/wait_s", "perf/epoch_time_s")
            )
            hcsc_epochs = range(warmup, epochs)
            fractions = [waits[epoch] / times[epoch] for epoch in hcsc_epochs]
            mean_wait = statistics.mean(waits[epoch] for epoch in hcsc_epochs)
            mean_time = statistics.mean(times[epoch] for epoch in hcsc_epochs)
            per_epoch = " ".join(f"{100 * fraction:.1f}%" for fraction in fractions)
            mode = f"overlap {'on ' if overlap else 'off'} where {where:7s}"
            print(
                f"  {mode}: wait {mean_wait:5.2f} s of {mean_time:5.1f} s per epoch = "
                f"{100 * statistics.mean(fractions):5.1f}% (epochs: {per_epoch}), run {result.wall_time_s:.0f} s"
            )


def main() -> None:
    """Parse arguments and run the parts asked for."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", type=int, help="data sizes for the k-means timing (none: skip)")
    parser.add_argument("--hierarchy", nargs="+", type=int, default=[3000, 2000, 1000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--nredo", type=int, default=5)
    parser.add_argument("--round-trip", metavar="CONFIG", help="an HCSC config whose clustering actor is timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stall", metavar="CONFIG", help="an HCSC config trained with overlap off and on")
    parser.add_argument("--where", nargs="+", default=["actor"], choices=["actor", "workers"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    if args.sizes is not None:
        kmeans_growth(args.sizes or [50000, 200000, 1000000], args.hierarchy, args.dim, args.niter, args.nredo)
    if args.round_trip:
        round_trip(load_config(args.round_trip), args.repeats)
    if args.stall:
        modes = [(overlap, where) for where in args.where for overlap in (False, True)]
        stall(load_config(args.stall), modes, args.epochs, args.warmup)


if __name__ == "__main__":
    main()
