"""Methods that read intermediate feature maps refuse a timm backbone by name; the others train on one."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ExperimentConfig, load_config, with_overrides
from pipeline.methods import Batch, StepInfo, build_method, get_method, method_names

VIT = {
    "model.backbone": "timm:vit_tiny_patch16_224",
    "model.timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "train.batch_size": 8,
    "method.queue_size": 16,
}
NEEDS_RESNET = {"cpc", "dim", "dscl", "scl", "selfcon"}


def vit_config(name: str) -> ExperimentConfig:
    """Return the quickstart with method ``name`` on a tiny ViT (queue size only where the method has one)."""
    config = load_config("quickstart.yaml", [f"method.name={name}"])
    values = {key: value for key, value in VIT.items() if key != "method.queue_size" or "queue_size" in config.method}
    return with_overrides(config, values)


@pytest.mark.parametrize("name", sorted(NEEDS_RESNET))
def test_feature_map_methods_refuse_a_timm_backbone_naming_the_key(name: str) -> None:
    with pytest.raises(ValueError, match=rf"model.backbone = 'timm:vit_tiny_patch16_224': {name} .* built-in ResNets"):
        get_method(name).validate(vit_config(name), 1)


def test_every_other_built_in_method_takes_a_step_on_a_vit() -> None:
    others = [name for name in method_names() if get_method(name).__module__.startswith("pipeline.")]
    others = sorted(set(others) - NEEDS_RESNET)
    assert {"moco", "ascl", "ascl_byol", "hcsc", "supcon", "simclr", "supcon_s"} <= set(others)
    get_method("moco").validate(vit_config("moco"), 1)
    for name in others:
        config = vit_config(name)
        method = build_method(config, num_classes=4)
        views = {view: torch.randn(8, 3, 32, 32) for view in get_method(name).views(config)}
        losses = method(Batch(views, torch.arange(8) % 4, torch.arange(8)), StepInfo(0, 0, 10))
        losses["loss"].backward()
        assert torch.isfinite(losses["loss"]), name
        assert method.evaluation_networks()["backbone"](torch.randn(2, 3, 32, 32)).shape == (2, 32), name
