"""Tiny method instances for unit tests: width-4 ResNet-18 with the CIFAR stem, one worker, 16 px images."""

from __future__ import annotations

import torch

from pipeline.config import load_config, with_overrides
from pipeline.methods import Method, build_method


def make_method(method: str, num_classes: int, batch_size: int, **overrides: object) -> Method:
    """Return method ``method`` built on one worker with seed 0 and the given dotted config overrides."""
    values = {"model.width": 4, "model.cifar_stem": True, "train.batch_size": batch_size, "data.image_size": 16}
    values.update(overrides)
    config = with_overrides(load_config(None, [f"method.name={method}"]), values)
    torch.manual_seed(0)
    return build_method(config, num_classes)
