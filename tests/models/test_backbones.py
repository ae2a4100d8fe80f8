"""Tests of the ResNet backbones and of the batch-norm layers they are built with."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.backbones import ResNet, build_backbone, global_avg_pool
from pipeline.models.norm import SplitBatchNorm2d, norm_layer


def brute_force_split_bn(bn: nn.BatchNorm2d, x: torch.Tensor, splits: int) -> tuple[torch.Tensor, ...]:
    """Return (output, running_mean, running_var) of BN applied to each group b % splits on its own."""
    out = torch.empty_like(x)
    means, variances = [], []
    for group in range(splits):
        running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
        out[group::splits] = F.batch_norm(
            x[group::splits], running_mean, running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps
        )
        means.append(running_mean)
        variances.append(running_var)
    return out, torch.stack(means).mean(dim=0), torch.stack(variances).mean(dim=0)


def test_split_bn_training_matches_groupwise_loop() -> None:
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, num_splits=4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(8, 3, 5, 4) * torch.tensor([1.0, 2.0, 3.0])[:, None, None] + 1  # [B, C, H, W]
    expected, expected_mean, expected_var = brute_force_split_bn(bn, x, 4)
    out = bn(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.num_batches_tracked.item() == 1


def test_split_bn_differs_from_plain_bn_in_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    x[::2] += 5  # group 0 of two splits is shifted: split statistics must differ from whole-batch ones
    assert not torch.allclose(SplitBatchNorm2d(3, num_splits=2)(x), nn.BatchNorm2d(3)(x))


def test_split_bn_handles_channels_last_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    expected = SplitBatchNorm2d(3, num_splits=2)(x)
    torch.testing.assert_close(SplitBatchNorm2d(3, num_splits=2)(x.to(memory_format=torch.channels_last)), expected)


def test_split_bn_eval_is_plain_bn() -> None:
    torch.manual_seed(0)
    split, plain = SplitBatchNorm2d(3, num_splits=4), nn.BatchNorm2d(3)
    split(torch.randn(8, 3, 4, 4))
    plain.load_state_dict(split.state_dict())
    x = torch.randn(6, 3, 4, 4)  # eval accepts any batch size
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))


def test_split_bn_gradients_flow_to_input_and_affine() -> None:
    bn = SplitBatchNorm2d(2, num_splits=2)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    (bn(x) * torch.randn(4, 2, 3, 3)).sum().backward()
    assert x.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None


def test_split_bn_rejects_indivisible_batch() -> None:
    with pytest.raises(ValueError, match="batch size 6 is not divisible by num_splits=4"):
        SplitBatchNorm2d(3, num_splits=4)(torch.randn(6, 3, 2, 2))


def test_split_bn_rejects_zero_splits() -> None:
    with pytest.raises(ValueError, match="num_splits must be at least 1, got 0"):
        SplitBatchNorm2d(3, num_splits=0)


def test_norm_layer_factories() -> None:
    assert type(norm_layer("plain")(4)) is nn.BatchNorm2d
    split = norm_layer("split", 8)(4)
    assert isinstance(split, SplitBatchNorm2d) and split.num_splits == 8 and split.num_features == 4
    with pytest.raises(ValueError, match="unknown norm kind 'group'"):
        norm_layer("group", 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("cifar_stem", [False, True])
@pytest.mark.parametrize(("depth", "expansion"), [(18, 1), (34, 1), (50, 4)])
def test_resnet_shapes(depth: int, expansion: int, cifar_stem: bool, size: int) -> None:
    torch.manual_seed(0)
    width = 8
    model = ResNet(depth, cifar_stem=cifar_stem, width=width)
    x = torch.randn(2, 3, size, size)
    assert model.feature_dim == 8 * width * expansion
    assert model.total_stride == (8 if cifar_stem else 32)
    assert model.stage_channels == {f"layer{i + 1}": width * 2**i * expansion for i in range(4)}
    maps = model.forward_stages(x)
    assert list(maps) == list(model.stage_names)
    stage_strides = [1, 2, 4, 8] if cifar_stem else [4, 8, 16, 32]
    for (name, feature_map), stride in zip(maps.items(), stage_strides, strict=True):
        assert feature_map.shape == (2, model.stage_channels[name], size // stride, size // stride)
    last = model.forward_map(x)
    assert last.shape == (2, model.feature_dim, size // model.total_stride, size // model.total_stride)
    torch.testing.assert_close(last, maps["layer4"])
    features = model(x)
    assert features.shape == (2, model.feature_dim)
    torch.testing.assert_close(features, global_avg_pool(last))


def test_forward_stages_stops_at_until() -> None:
    model = ResNet(18, cifar_stem=True, width=4)
    maps = model.forward_stages(torch.randn(2, 3, 16, 16), until="layer2")
    assert list(maps) == ["layer1", "layer2"]
    with pytest.raises(ValueError, match="unknown stage 'layer5'"):
        model.forward_stages(torch.randn(2, 3, 16, 16), until="layer5")


def test_stages_after() -> None:
    model = ResNet(18, width=4)
    assert model.stages_after("layer2") == [model.layer3, model.layer4]
    assert model.stages_after("layer4") == []


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_state_dict_matches_torchvision_without_fc(depth: int) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")()
        ours = ResNet(depth)
    expected = {key: value.shape for key, value in reference.state_dict().items() if not key.startswith("fc.")}
    assert {key: value.shape for key, value in ours.state_dict().items()} == expected


def test_torchvision_weights_load_and_give_same_features() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    ours = ResNet(18).eval()
    state = {key: value for key, value in reference.state_dict().items() if not key.startswith("fc.")}
    ours.load_state_dict(state)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))


def test_cifar_stem_has_3x3_stride_1_conv_and_no_pool() -> None:
    model = ResNet(18, cifar_stem=True, width=8)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_build_backbone_from_config() -> None:
    cfg = ModelConfig(backbone="resnet50", cifar_stem=True, width=8, bn_splits=4)
    model = build_backbone(cfg, "split")
    assert model.depth == 50 and model.cifar_stem and model.feature_dim == 256
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in norms)
    plain = build_backbone(cfg.model_copy(update={"backbone": "resnet18"}), "plain")
    assert plain.depth == 18 and all(
        type(m) is nn.BatchNorm2d for m in plain.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_split_bn_backbone_trains_on_divisible_batch() -> None:
    model = build_backbone(ModelConfig(cifar_stem=True, width=4, bn_splits=2), "split")
    before = copy.deepcopy(model.bn1.running_mean)
    assert model(torch.randn(4, 3, 16, 16)).shape == (4, 32)
    assert not torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"depth": 101}, "unsupported ResNet depth 101"), ({"width": 0}, "width")]
)
def test_resnet_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNet(**kwargs)
