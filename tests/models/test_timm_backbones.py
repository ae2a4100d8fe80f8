"""timm backbones by name: pooled features, the run's input size, split batch norm, clear errors naming the key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, ModelConfig, load_config
from pipeline.models.backbones import TimmBackbone, build_backbone, check_timm_backbone
from pipeline.models.norm import SplitBatchNorm2d

# A ViT small enough for a CPU test: 32 px images in 8 px patches, two blocks of width 32.
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def timm_model(name: str, **kwargs: object) -> ModelConfig:
    """Return a model config with the timm backbone ``name``, ``kwargs`` for timm and split BN in two groups."""
    return ModelConfig(backbone=f"timm:{name}", timm_kwargs=kwargs, bn_splits=2)


def test_a_vit_is_built_for_the_run_image_size_and_returns_pooled_features() -> None:
    backbone = build_backbone(timm_model("vit_tiny_patch16_224", **TINY_VIT), norm="plain", image_size=32)
    assert isinstance(backbone, TimmBackbone) and backbone.feature_dim == 32
    assert backbone.model.patch_embed.img_size == (32, 32)
    features = backbone(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, 32) and features.requires_grad


def test_a_convnet_ignores_the_image_size_and_split_bn_replaces_its_batch_norms() -> None:
    model = timm_model("resnet10t")
    plain = build_backbone(model, norm="plain", image_size=32)
    split = build_backbone(model, norm="split", image_size=32)
    batch_norms = [module for module in plain.modules() if type(module) is nn.BatchNorm2d]
    splits = [module for module in split.modules() if isinstance(module, SplitBatchNorm2d)]
    assert batch_norms and len(splits) == len(batch_norms)
    assert all(module.num_splits == model.bn_splits for module in splits)
    assert split(torch.randn(8, 3, 32, 32)).shape == (8, plain.feature_dim)


def test_a_vit_has_no_batch_norm_for_split_bn_to_replace() -> None:
    backbone = build_backbone(timm_model("vit_tiny_patch16_224", **TINY_VIT), norm="split", image_size=32)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in backbone.modules())


def test_unknown_names_and_refused_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.backbone = 'timm:vit_tny_patch16_224': timm has no model .*vit_tiny"):
        check_timm_backbone(timm_model("vit_tny_patch16_224"), 32, "plain")
    with pytest.raises(ValueError, match=r"model.timm_kwargs = \{'zz': 1\}: timm's resnet10t does not accept them"):
        check_timm_backbone(timm_model("resnet10t", zz=1), 32, "plain")
    with pytest.raises(ValueError, match=r"model.batch_norm: split batch norm cannot replace .*BatchNormAct2d"):
        check_timm_backbone(timm_model("efficientnet_b0"), 32, "split")
    check_timm_backbone(timm_model("efficientnet_b0"), 32, "plain")
    with pytest.raises(ValueError, match="layer norm is built into ResNets only"):
        build_backbone(timm_model("resnet10t"), norm="layer")


def test_the_config_accepts_resnets_and_timm_names_only() -> None:
    config = load_config("quickstart.yaml", ["model.backbone=timm:vit_tiny_patch16_224", "model.timm_kwargs.depth=2"])
    assert config.model.uses_timm and config.model.timm_kwargs == {"depth": 2}
    with pytest.raises(ConfigError, match="model.backbone = 'vgg16': must be one of resnet18, resnet34, resnet50 or"):
        load_config("quickstart.yaml", ["model.backbone=vgg16"])
    with pytest.raises(ConfigError, match="timm_kwargs apply to a timm backbone"):
        load_config("quickstart.yaml", ["model.timm_kwargs.depth=2"])
