"""Tests of SelfCon's multi-exit network: shapes, independent branches and gradient flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models.backbones import ResNet
from pipeline.models.multi_exit import FcExit, MultiExitNetwork, StageExit


def small_backbone(depth: int = 18) -> ResNet:
    """Return a tiny CIFAR-stem ResNet with fixed initial weights."""
    torch.manual_seed(0)
    return ResNet(depth, cifar_stem=True, width=4)


def parameter_ids(module: nn.Module) -> set[int]:
    """Return the ids of every parameter of a module."""
    return {id(parameter) for parameter in module.parameters()}


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("exit_type", ["fc", "same"])
def test_output_and_feature_shapes(exit_type: str, depth: int) -> None:
    backbone = small_backbone(depth)
    network = MultiExitNetwork(backbone, exits=["layer1", "layer2"], exit_type=exit_type, proj_dim=16)
    x = torch.randn(4, 3, 16, 16)
    embeddings = network(x)
    features = network.features(x)
    assert network.num_branches == 3
    assert [tuple(e.shape) for e in embeddings] == [(4, 16)] * 3
    assert [tuple(f.shape) for f in features] == [(4, backbone.feature_dim)] * 3
    head = network.head[0]
    assert (head.in_features, head.out_features) == (backbone.feature_dim, backbone.feature_dim)


def test_outputs_are_ordered_exits_then_backbone_and_not_normalised() -> None:
    network = MultiExitNetwork(small_backbone(), exits=["layer2"], exit_type="fc").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        embeddings = network(x)
        expected_backbone = network.head(network.backbone(x))
        expected_exit = network.exit_heads["layer2"](
            network.exits["layer2"](network.backbone.forward_stages(x)["layer2"])
        )
    torch.testing.assert_close(embeddings[-1], expected_backbone)
    torch.testing.assert_close(embeddings[0], expected_exit)
    assert not torch.allclose(embeddings[0].norm(dim=1), torch.ones(3))


def test_exit_types_build_expected_modules() -> None:
    backbone = small_backbone()
    fc = MultiExitNetwork(backbone, exit_type="fc").exits["layer2"]
    assert isinstance(fc, FcExit)
    assert (fc.fc.in_features, fc.fc.out_features) == (backbone.stage_channels["layer2"], backbone.feature_dim)
    same = MultiExitNetwork(small_backbone(), exit_type="same").exits["layer2"]
    assert isinstance(same, StageExit) and len(same.stages) == 2


@pytest.mark.parametrize("exit_type", ["fc", "same"])
def test_branches_share_no_parameters(exit_type: str) -> None:
    network = MultiExitNetwork(small_backbone(), exits=["layer1", "layer2"], exit_type=exit_type)
    groups = [
        parameter_ids(network.backbone),
        parameter_ids(network.head),
        *(parameter_ids(network.exits[name]) for name in network.exit_names),
        *(parameter_ids(network.exit_heads[name]) for name in network.exit_names),
    ]
    assert all(groups)
    assert sum(len(group) for group in groups) == len(set().union(*groups)) == len(parameter_ids(network))


def test_same_exit_copies_are_freshly_initialised() -> None:
    network = MultiExitNetwork(small_backbone(), exit_type="same")
    copied_conv = network.exits["layer2"].stages[0][0].conv1.weight
    assert copied_conv.shape == network.backbone.layer3[0].conv1.weight.shape
    assert not torch.equal(copied_conv, network.backbone.layer3[0].conv1.weight)


@pytest.mark.parametrize("exit_type", ["fc", "same"])
def test_gradients_reach_every_branch(exit_type: str) -> None:
    network = MultiExitNetwork(small_backbone(), exits=["layer1", "layer2"], exit_type=exit_type)
    torch.manual_seed(1)
    embeddings = network(torch.randn(4, 3, 16, 16))
    sum((e * torch.randn_like(e)).sum() for e in embeddings).backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_exit_loss_reaches_shared_stages_but_not_later_backbone() -> None:
    network = MultiExitNetwork(small_backbone(), exits=["layer2"], exit_type="same")
    network(torch.randn(4, 3, 16, 16))[0].square().sum().backward()
    assert network.backbone.layer1[0].conv1.weight.grad is not None
    assert network.exits["layer2"].stages[0][0].conv1.weight.grad is not None
    assert network.backbone.layer3[0].conv1.weight.grad is None
    assert network.head[0].weight.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exits": ["layer4"]}, "duplicate the backbone"),
        ({"exits": ["layer9"]}, "unknown stage 'layer9'"),
        ({"exits": ["layer2", "layer2"]}, "distinct"),
        ({"exits": []}, "non-empty list"),
        ({"exits": "layer2"}, "non-empty list"),
        ({"exit_type": "conv"}, "unknown exit type 'conv'"),
    ],
)
def test_bad_exit_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiExitNetwork(small_backbone(), **kwargs)


def test_proj_hidden_dim_is_used_by_every_head() -> None:
    network = MultiExitNetwork(small_backbone(), exits=["layer1", "layer3"], proj_hidden_dim=12, proj_dim=8)
    heads = [network.head, *network.exit_heads.values()]
    assert [(h.hidden_dim, h.out_dim) for h in heads] == [(12, 8)] * 3


@pytest.mark.parametrize("exit_type", ["fc", "same"])
@pytest.mark.parametrize("stage", ["layer1", "layer2", "layer3"])
def test_a_single_exit_after_every_stage(stage: str, exit_type: str) -> None:
    backbone = small_backbone()
    network = MultiExitNetwork(backbone, exits=[stage], exit_type=exit_type, proj_dim=8)
    x = torch.randn(2, 3, 16, 16)
    assert [tuple(e.shape) for e in network(x)] == [(2, 8), (2, 8)]
    assert [tuple(f.shape) for f in network.features(x)] == [(2, backbone.feature_dim)] * 2
    if exit_type == "same":
        assert len(network.exits[stage].stages) == 3 - backbone.stage_index(stage)
