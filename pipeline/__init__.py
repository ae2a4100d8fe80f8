"""Contrastive pretraining pipeline; ``import pipeline`` stays torch-free (the command lines validate configs first)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def load_backbone(path: str | Path, network: str = "backbone") -> nn.Module:
    """Return the network ``network`` of a ``pipeline.export`` file, weights loaded, in eval mode."""
    # Imported here: torch must not load with the package (cold-start config errors stay fast).
    from pipeline.export import load_backbone as load

    return load(path, network)
