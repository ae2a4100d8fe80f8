"""Print the wall time of HCSC's bottom-up hierarchical k-means (``pipeline.clustering``) against the data size.

Random normalised 128-d embeddings clustered into 3000-2000-1000 prototypes (the official hierarchy)
with the official settings (niter 20, nredo 5, at most 1000 points per centroid), on FAISS's GPU when
the build has one, else on the CPU threads FAISS is given. Then the growth exponent between sizes:
k-means trains on at most ``1000 × N_0`` points (3M for N_0 = 3000), so up to that size the cost is
linear in N (nredo × niter passes over the data); beyond it only the final assignment pass grows.
The actor round trip and the training stall belong with the clustering actor, which is not built yet.
Example: ``python benchmarks/clustering.py --sizes 50000 200000 1000000 --nredo 5``.
"""

from __future__ import annotations

import argparse
import math

import faiss
import numpy as np

from pipeline.clustering import hierarchical_kmeans


def embeddings(count: int, dim: int, seed: int) -> np.ndarray:
    """Return ``count`` random unit vectors of ``dim`` dimensions (float32)."""
    points = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def main() -> None:
    """Parse arguments and print one line per data size, then the growth exponents."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", type=int, default=[50000, 200000, 1000000])
    parser.add_argument("--hierarchy", nargs="+", type=int, default=[3000, 2000, 1000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--nredo", type=int, default=5)
    args = parser.parse_args()
    print(
        f"hierarchy {args.hierarchy}, {args.dim}-d, niter {args.niter}, nredo {args.nredo}, "
        f"FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} threads"
    )
    timings: list[tuple[int, float]] = []
    for count in args.sizes:
        hierarchy = hierarchical_kmeans(
            embeddings(count, args.dim, seed=count), args.hierarchy, niter=args.niter, nredo=args.nredo
        )
        timings.append((count, hierarchy.seconds))
        non_empty = [level.non_empty() for level in hierarchy.levels]
        print(f"N = {count:8d}: {hierarchy.seconds:7.1f} s on {hierarchy.device}, non-empty clusters {non_empty}")
    for (small, small_time), (large, large_time) in zip(timings, timings[1:], strict=False):
        exponent = math.log(large_time / small_time) / math.log(large / small)
        print(
            f"{small} -> {large}: time x{large_time / small_time:.2f} for data x{large / small:.1f} (~N^{exponent:.2f})"
        )


if __name__ == "__main__":
    main()
