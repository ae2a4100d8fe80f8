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
