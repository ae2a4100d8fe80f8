"""Pictures of what was learned: a 2-D map of embeddings coloured by class (UMAP where installed, else PCA)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

# Above this many points the map draws an evenly spaced subset: the picture stays readable and UMAP quick.
MAX_POINTS = 5000


def project_2d(features: torch.Tensor) -> tuple[np.ndarray, str]:
    """Return ``[N, 2]`` coordinates of the features and the projection's name (``UMAP`` or ``PCA``)."""
    values = features.detach().double().cpu()
    if importlib.util.find_spec("umap") is not None:
        import umap

        coordinates = umap.UMAP(n_components=2, random_state=0).fit_transform(values.numpy())
        return np.asarray(coordinates, dtype=np.float64), "UMAP"
    centred = values - values.mean(dim=0, keepdim=True)
    # The top two right singular vectors are the principal axes; their signs are fixed for a stable picture.
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2].T
    axes = axes * torch.where(axes.sum(dim=0) < 0, -1.0, 1.0).to(axes.dtype)
    return (centred @ axes).numpy(), "PCA"


def embedding_map_png(features: torch.Tensor, labels: torch.Tensor, title: str, path: Path) -> str:
    """Return the projection's name after writing the embeddings' 2-D map, coloured by class, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if features.shape[0] > MAX_POINTS:
        keep = torch.linspace(0, features.shape[0] - 1, MAX_POINTS).long()
        features, labels = features[keep], labels[keep]
    coordinates, projection = project_2d(features)
    classes = labels.cpu().numpy()
    figure, axes = plt.subplots(figsize=(6, 6))
    scatter = axes.scatter(coordinates[:, 0], coordinates[:, 1], c=classes, cmap="tab20", s=4, alpha=0.8)
    if len(np.unique(classes)) <= 20:
        axes.legend(*scatter.legend_elements(num=None), title="class", fontsize=6, markerscale=0.6, loc="best")
    axes.set_title(f"{title} ({projection}, {features.shape[0]} images)")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return projection


def _level_positions(tree: list[dict[str, list[int]]]) -> list[np.ndarray]:
    """Return each level's x positions in [0, 1], children ordered under their parents (finest level first)."""
    positions: list[np.ndarray] = [np.empty(0)] * len(tree)
    top = len(tree[-1]["sizes"])
    positions[-1] = (np.arange(top) + 0.5) / top
    for index in range(len(tree) - 2, -1, -1):
        count = len(tree[index]["sizes"])
        parent_x = positions[index + 1][np.asarray(tree[index]["parents"], dtype=np.int64)]
        # Ordered by their parent's place, then by size: each family sits together under its parent.
        order = np.lexsort((-np.asarray(tree[index]["sizes"]), parent_x))
        x = np.empty(count)
        x[order] = (np.arange(count) + 0.5) / count
        positions[index] = x
    return positions


def hierarchy_png(tree: list[dict[str, list[int]]], title: str, class_names: list[str] | None = None) -> bytes:
    """Return the PNG bytes of a prototype hierarchy (``statistics.hierarchy_tree``'s levels), a row per level.

    Each prototype is sized by its images, coloured by its majority class and linked to its parent; levels of
    at most 30 prototypes also print each one's size and majority class.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    positions = _level_positions(tree)
    largest = max(max(level["sizes"], default=1) for level in tree) or 1
    figure, axes = plt.subplots(figsize=(10, 1.6 + 1.4 * len(tree)))
    colours = plt.get_cmap("tab20")
    for index, level in enumerate(tree):
        x, sizes = positions[index], np.asarray(level["sizes"], dtype=np.float64)
        majority = np.asarray(level["majority"], dtype=np.int64)
        if "parents" in level:
            parent_x = positions[index + 1][np.asarray(level["parents"], dtype=np.int64)]
            segments = np.stack(
                [np.stack([x, np.full_like(x, index)], 1), np.stack([parent_x, np.full_like(x, index + 1)], 1)], 1
            )
            axes.add_collection(LineCollection(segments, colors="0.7", linewidths=0.5, zorder=1))
        face = [colours(int(label) % 20) if label >= 0 else (0.6, 0.6, 0.6, 1.0) for label in majority]
        axes.scatter(
            x,
            np.full_like(x, index),
            s=8 + 200 * np.sqrt(sizes / largest),
            c=face,
            zorder=2,
            edgecolors="k",
            linewidths=0.3,
        )
        if len(sizes) <= 30:
            for left, size, label in zip(x, sizes.astype(int), majority, strict=True):
                name = "-" if label < 0 else (class_names[label] if class_names else str(label))
                axes.annotate(
                    f"{size}\n{name}",
                    (left, index),
                    textcoords="offset points",
                    xytext=(0, -22),
                    ha="center",
                    fontsize=6,
                )
    axes.set_yticks(
        range(len(tree)), [f"level {index}\n{len(level['sizes'])} prototypes" for index, level in enumerate(tree)]
    )
    axes.set_ylim(-0.7, len(tree) - 0.5)
    axes.set_xlim(0, 1)
    axes.set_xticks([])
    axes.set_title(f"{title} (size: images; colour and label: majority class)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
