"""Hierarchical k-means: composed assignments, parent maps, concentration, determinism and size checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.clustering import faiss_gpu_available, hierarchical_kmeans, hierarchy_sizes, scaled_sizes
from pipeline.losses import cluster_concentration


def blobs(seed: int = 0) -> np.ndarray:
    """Return 600 normalised 16-d points around 30 random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, 16))
    points = centres[rng.integers(0, 30, size=600)] + 0.1 * rng.standard_normal((600, 16))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_levels_are_consistent_and_compose_upward() -> None:
    hierarchy = hierarchical_kmeans(blobs(), [40, 12, 4], niter=10, nredo=2)
    assert hierarchy.sizes == [40, 12, 4]
    assert hierarchy.device == ("gpu" if faiss_gpu_available() else "cpu")
    for index, level in enumerate(hierarchy.levels):
        assert level.assignments.shape == (600,)  # every image assigned at every level
        assert level.assignments.min() >= 0 and level.assignments.max() < level.size
        np.testing.assert_allclose(np.linalg.norm(level.centroids, axis=1), 1.0, rtol=1e-5)
        assert level.concentration.shape == (level.size,)
        assert level.concentration.mean() == pytest.approx(0.2, rel=1e-5)
        if index + 1 < len(hierarchy.levels):
            upper = hierarchy.levels[index + 1]
            assert level.parents is not None and level.parents.shape == (level.size,)
            # Same cluster at level l implies same cluster at l + 1: the image's upper cluster is its parent's.
            np.testing.assert_array_equal(upper.assignments, level.parents[level.assignments])
        else:
            assert level.parents is None


def test_concentration_is_measured_against_the_unnormalised_centroids() -> None:
    points = blobs(2)
    level = hierarchical_kmeans(points, [25], niter=10, nredo=1).levels[0]
    # Recompute φ from scratch: members' distances to their cluster's mean (k-means' unnormalised centroid).
    raw = np.stack([points[level.assignments == c].mean(axis=0) for c in range(25)])
    sq = ((points - raw[level.assignments]) ** 2).sum(axis=1)
    expected = cluster_concentration(torch.from_numpy(sq.astype(np.float64)), torch.from_numpy(level.assignments), 25)
    np.testing.assert_allclose(level.concentration, expected.numpy(), rtol=1e-3)


def test_same_seed_same_hierarchy_and_torch_input() -> None:
    points = blobs(1)
    first = hierarchical_kmeans(points, [20, 5], niter=5, nredo=1, seed=3)
    second = hierarchical_kmeans(torch.from_numpy(points), [20, 5], niter=5, nredo=1, seed=3)
    for a, b in zip(first.levels, second.levels, strict=True):
        np.testing.assert_array_equal(a.assignments, b.assignments)
        np.testing.assert_array_equal(a.centroids, b.centroids)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([700, 10], "level 0 has 700 clusters but there are only 600 points"),
        ([40, 40], "must shrink level by level, got 40 clusters above 40"),
        ([40, 60], "must shrink level by level"),
        ([], "non-empty list of positive ints"),
        ([40, 0], "non-empty list of positive ints"),
    ],
)
def test_bad_sizes_are_one_clear_error(sizes: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hierarchical_kmeans(blobs(), sizes)


def test_gpu_demanded_without_faiss_gpu_is_refused() -> None:
    if faiss_gpu_available():
        pytest.skip("this machine's FAISS has a GPU: the refusal path cannot be reached")
    with pytest.raises(ValueError, match="use_gpu=True but this FAISS build has no GPU"):
        hierarchical_kmeans(blobs(), [10], use_gpu=True)


@pytest.mark.parametrize(
    ("sizes", "points", "expected"),
    [
        ([3000, 2000, 1000], 4000, [400, 266, 133]),  # at least 10 images per level-0 prototype
        ([3000, 2000, 1000], 1_281_167, [3000, 2000, 1000]),  # never grown, unchanged when the data suffices
        ([30, 29, 28], 100, [10, 9, 8]),  # levels that would collide keep shrinking by one
        ([20, 2, 1], 25, [2, 1]),  # a level that would reach zero prototypes is dropped
    ],
)
def test_auto_scaling_shrinks_only_what_the_data_cannot_fill(
    sizes: list[int], points: int, expected: list[int]
) -> None:
    assert scaled_sizes(sizes, points) == expected
    assert hierarchy_sizes(sizes, points, "auto") == expected


def test_without_scaling_a_hierarchy_too_large_for_the_data_is_refused() -> None:
    assert hierarchy_sizes([30, 10], 600) == [30, 10]
    with pytest.raises(ValueError, match="level 0 has 3000 clusters but there are only 600 points"):
        hierarchy_sizes([3000, 2000, 1000], 600, "off")
    with pytest.raises(ValueError, match="scale must be 'off' or 'auto'"):
        hierarchy_sizes([30], 600, "half")
