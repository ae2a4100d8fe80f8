"""Tests of the projection and prediction heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models.heads import PredictionHead, ProjectionHead


def test_projection_head_structure_and_shape() -> None:
    head = ProjectionHead(32, 16, 8)
    assert [type(layer) for layer in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (32, 16)
    assert (head[2].in_features, head[2].out_features) == (16, 8)
    assert head(torch.randn(5, 32)).shape == (5, 8)


def test_projection_head_is_mlp_not_normalised() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(4, 6, 3)
    x = torch.randn(7, 4)
    expected = torch.relu(x @ head[0].weight.T + head[0].bias) @ head[2].weight.T + head[2].bias
    torch.testing.assert_close(head(x), expected)


def test_prediction_head_defaults_structure_and_shape() -> None:
    head = PredictionHead()
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[1].num_features) == (128, 512, 512)
    assert (head[3].in_features, head[3].out_features) == (512, 128)
    assert head(torch.randn(4, 128)).shape == (4, 128)


def test_prediction_head_custom_dims() -> None:
    assert PredictionHead(16, 32, 8)(torch.randn(3, 16)).shape == (3, 8)


@pytest.mark.parametrize("head_class", [ProjectionHead, PredictionHead])
def test_heads_reject_non_positive_dims(head_class: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer, got 0"):
        head_class(8, 0, 4)
