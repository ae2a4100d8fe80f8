"""Every registered method's evaluation networks map images to ``[B, feature_dim]`` and say their ``feature_dim``."""

from __future__ import annotations

import pytest
import torch

from pipeline.methods import build_method, get_method, method_names
from tests.support.invariance import invariance_config

METHODS = [name for name in method_names() if not get_method(name).__module__.startswith("tests.")]


@pytest.mark.parametrize("name", METHODS)
def test_each_evaluation_network_states_its_feature_width(name: str) -> None:
    config = invariance_config(name)
    method = build_method(config, num_classes=4).eval()
    images = torch.randn(2, 3, config.data.image_size, config.data.image_size)
    networks = method.evaluation_networks()
    assert next(iter(networks)) == "backbone"
    with torch.no_grad():
        for network_name, network in networks.items():
            assert network(images).shape == (2, network.feature_dim), network_name
