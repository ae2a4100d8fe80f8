"""Tiny method instances for unit tests: width-4 ResNet-18 with the CIFAR stem, one worker, 16 px images."""

from __future__ import annotations

import torch

from pipeline.config import load_config, with_overrides
from pipeline.methods import Method, MethodContext, get_method


def make_method(method: str, num_classes: int, batch_size: int, **overrides: object) -> Method:
    """Return method ``method`` built on one worker with seed 0 and the given dotted config overrides."""
    values = {"model.width": 4, "model.cifar_stem": True, "train.batch_size": batch_size, "data.image_size": 16}
    values.update(overrides)
    config = with_overrides(load_config(None, [f"method.name={method}"]), values)
    torch.manual_seed(0)
    method_class = get_method(method)
    context = MethodContext(config, 0, 1, num_classes, 10, method_class.batch_norm(config, world_size=1))
    return method_class(context)
