"""Bottom-up hierarchical k-means with FAISS (HCSC): embeddings into N_0 clusters, then centroids into N_1, ...

Level 0 clusters the embeddings; level l+1 clusters the normalised centroids of level l, each one
point, unweighted. Assignments compose upward (image → level-0 cluster → its parent → ...). Each
level carries PCL's concentration φ per cluster, computed from its members' distances to the
unnormalised centroids; the centroids are normalised afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import faiss
import numpy as np
import torch

from pipeline.losses import cluster_concentration

MAX_POINTS_PER_CENTROID = 1000
MIN_POINTS_PER_CENTROID = 10


@dataclass(frozen=True)
class Level:
    """One level: normalised ``centroids [N, D]``, concentration ``[N]``, image assignments ``[n]``, parents ``[N]``."""

    centroids: np.ndarray
    concentration: np.ndarray
    assignments: np.ndarray
    parents: np.ndarray | None

    @property
    def size(self) -> int:
        """Return the number of clusters at this level."""
        return int(self.centroids.shape[0])

    def non_empty(self) -> int:
        """Return how many clusters hold at least one image."""
        return int(np.unique(self.assignments).size)


@dataclass(frozen=True)
class Hierarchy:
    """The levels from the finest (0) up, where k-means ran (``"gpu"`` or ``"cpu"``) and how long it took."""

    levels: tuple[Level, ...]
    device: str
    seconds: float

    @property
    def sizes(self) -> list[int]:
        """Return the number of clusters per level, finest first."""
        return [level.size for level in self.levels]


def faiss_gpu_available() -> bool:
    """Return whether this FAISS build has GPU support and sees a GPU (faiss-cpu would silently run on CPU)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_sizes(sizes: Sequence[int], num_points: int) -> list[int]:
    """Return ``sizes`` as ints if they form a valid hierarchy for ``num_points`` points; raise ValueError otherwise."""
    values = list(sizes)
    if not values or any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in values):
        raise ValueError(f"hierarchy sizes must be a non-empty list of positive ints, got {values}")
    if values[0] > num_points:
        raise ValueError(f"hierarchy level 0 has {values[0]} clusters but there are only {num_points} points")
    for lower, upper in zip(values, values[1:], strict=False):
        if upper >= lower:
            raise ValueError(
                f"hierarchy sizes must shrink level by level, got {upper} clusters above {lower}: {values}"
            )
    return values


def scaled_sizes(sizes: Sequence[int], num_points: int) -> list[int]:
    """Return ``sizes`` shrunk in proportion so that level 0 has at least 10 points per cluster (never grown).

    Levels keep shrinking upward: a level that would not be smaller than the one below is dropped.
    """
    factor = min(1.0, num_points / (MIN_POINTS_PER_CENTROID * sizes[0]))
    scaled: list[int] = []
    for size in sizes:
        value = max(1, int(size * factor))
        if scaled and value >= scaled[-1]:
            value = scaled[-1] - 1
        if value < 1:
            break
        scaled.append(value)
    return scaled


def hierarchy_sizes(sizes: Sequence[int], num_points: int, scale: str = "off") -> list[int]:
    """Return the level sizes to cluster ``num_points`` points with: ``sizes`` (``scale='off'``) or shrunk (``'auto'``).

    Raises ValueError when the result is not a valid hierarchy for the data (too many clusters, levels
    that do not shrink).
    """
    if scale not in ("off", "auto"):
        raise ValueError(f"hierarchy scale must be 'off' or 'auto', got {scale!r}")
    return check_sizes(scaled_sizes(sizes, num_points) if scale == "auto" else sizes, num_points)


def _kmeans(points: np.ndarray, clusters: int, niter: int, nredo: int, seed: int, gpu: bool) -> tuple[np.ndarray, ...]:
    """Return the unnormalised centroids ``[N, D]``, each point's cluster ``[n]`` and squared distance ``[n]``."""
    kmeans = faiss.Kmeans(
        points.shape[1],
        clusters,
        niter=niter,
        nredo=nredo,
        seed=seed,
        gpu=gpu,
        verbose=False,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=MIN_POINTS_PER_CENTROID,
    )
    kmeans.train(points)
    sq_distances, nearest = kmeans.index.search(points, 1)
    return kmeans.centroids, nearest[:, 0].astype(np.int64), sq_distances[:, 0]


def hierarchical_kmeans(
    features: np.ndarray | torch.Tensor,
    sizes: Sequence[int],
    *,
    niter: int = 20,
    nredo: int = 5,
    seed: int = 0,
    temperature: float = 0.2,
    use_gpu: bool | None = None,
) -> Hierarchy:
    """Return the bottom-up k-means hierarchy of ``features [n, D]`` with ``sizes`` clusters per level (finest first).

    Level l uses seed ``seed + l``. ``use_gpu`` None picks the GPU when this FAISS build can use one;
    True without one is an error.
    """
    points = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"hierarchical_kmeans expects features [n, D] with n > 0, got shape {points.shape}")
    values = check_sizes(sizes, points.shape[0])
    available = faiss_gpu_available()
    if use_gpu and not available:
        raise ValueError("use_gpu=True but this FAISS build has no GPU support or sees no GPU (install faiss-gpu)")
    gpu = available if use_gpu is None else bool(use_gpu)
    started = time.perf_counter()
    points = np.ascontiguousarray(points, dtype=np.float32)
    levels: list[Level] = []
    image_assignments: np.ndarray | None = None
    for index, clusters in enumerate(values):
        centroids, nearest, sq_distances = _kmeans(points, clusters, niter, nredo, seed + index, gpu)
        concentration = cluster_concentration(
            torch.from_numpy(sq_distances.astype(np.float64)), torch.from_numpy(nearest), clusters, temperature
        ).numpy()
        normalised = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        if levels:
            # The points of this level are the previous level's centroids: ``nearest`` is their parent map.
            levels[-1] = replace(levels[-1], parents=nearest)
            image_assignments = nearest[image_assignments]
        else:
            image_assignments = nearest
        levels.append(Level(normalised.astype(np.float32), concentration.astype(np.float32), image_assignments, None))
        points = np.ascontiguousarray(normalised, dtype=np.float32)
    return Hierarchy(tuple(levels), "gpu" if gpu else "cpu", time.perf_counter() - started)
