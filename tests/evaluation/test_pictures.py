"""The embeddings' 2-D map: the projection keeps what separates the classes, and the PNG is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation import pictures
from pipeline.evaluation.pictures import _level_positions, embedding_map_png, hierarchy_png, project_2d

HAS_UMAP = importlib.util.find_spec("umap") is not None


def _two_classes(points_per_class: int = 50, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Return two Gaussian blobs far apart along one random direction, and their labels."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0)
    noise = torch.randn(2 * points_per_class, dim, generator=generator)
    labels = torch.arange(2).repeat_interleave(points_per_class)
    return noise + 20.0 * direction * (2 * labels - 1).unsqueeze(1), labels


def test_the_projection_is_named_after_what_is_installed() -> None:
    features, _ = _two_classes()
    coordinates, projection = project_2d(features)
    assert coordinates.shape == (100, 2)
    assert projection == ("UMAP" if HAS_UMAP else "PCA")


@pytest.mark.skipif(HAS_UMAP, reason="umap-learn is installed here: the map is UMAP, whose axes are not PCA's")
def test_pca_puts_the_separating_direction_on_the_first_axis() -> None:
    features, labels = _two_classes()
    coordinates, _ = project_2d(features)
    first = coordinates[:, 0]
    # Every point of one class lies on one side of the other class along the first principal axis.
    assert first[labels.numpy() == 0].max() < first[labels.numpy() == 1].min() or (
        first[labels.numpy() == 1].max() < first[labels.numpy() == 0].min()
    )
    again, _ = project_2d(features)
    np.testing.assert_array_equal(coordinates, again)


def test_the_map_is_a_png_and_large_sets_are_subsampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pictures, "MAX_POINTS", 40)
    seen: list[int] = []
    original = pictures.project_2d

    def counted(features: torch.Tensor) -> tuple[np.ndarray, str]:
        seen.append(features.shape[0])
        return original(features)

    monkeypatch.setattr(pictures, "project_2d", counted)
    features, labels = _two_classes()
    path = tmp_path / "maps" / "embedding_map.png"

    projection = embedding_map_png(features, labels, "moco: test embeddings", path)

    assert projection in {"UMAP", "PCA"}
    assert seen == [40]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


TREE = [
    {"sizes": [3, 2, 3, 0], "majority": [0, 1, 2, -1], "parents": [1, 0, 1, 0]},
    {"sizes": [2, 6], "majority": [1, 2]},
]


def test_children_sit_under_their_parents() -> None:
    lower, upper = _level_positions(TREE)
    assert upper.tolist() == [0.25, 0.75]
    # Parent 0's children (1 and 3, larger first) take the left half, parent 1's (0 and 2) the right.
    assert np.argsort(lower).tolist() == [1, 3, 0, 2]


def test_the_hierarchy_is_a_png() -> None:
    png = hierarchy_png(TREE, "hcsc: hierarchy")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
