"""SelfCon and SupCon-S: what they feed ``supcon``, which pairs are positives, and where gradients go."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses import supcon
from pipeline.methods import Batch, StepInfo
from pipeline.methods.selfcon import method as selfcon_module
from pipeline.methods.supcon import method as supcon_module
from tests.support.methods import make_method


def make(method: str, **overrides: object):
    """Return a tiny method on one worker (3 classes, batch 6)."""
    return make_method(method, num_classes=3, batch_size=6, **overrides)


LABELS = torch.tensor([0, 1, 0, 2, 1, 0])


def batch_for(method, labels: torch.Tensor = LABELS) -> Batch:
    """Return random images for every declared view of ``method``."""
    names = method.views(method.context.config)
    return Batch({name: torch.randn(labels.shape[0], 3, 16, 16) for name in names}, labels, torch.arange(len(labels)))


def captured_call(method, batch: Batch, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the features and labels the method passes to ``supcon``."""
    seen: dict[str, object] = {}

    def spy(features, labels=None, *args, **kwargs):
        seen["features"], seen["labels"] = features, labels
        return supcon(features, labels, *args, **kwargs)

    monkeypatch.setattr(selfcon_module, "supcon", spy)
    monkeypatch.setattr(supcon_module, "supcon", spy)
    method(batch, StepInfo(0, 0, 10))
    return seen["features"], seen["labels"]


def positive_pairs(features: torch.Tensor, labels: torch.Tensor | None) -> set[tuple[int, int, int, int]]:
    """Return (row, branch, row', branch') of every positive pair, by brute force over the view-major layout."""
    rows, branches, _ = features.shape
    identity = list(range(rows)) if labels is None else labels.tolist()
    return {
        (r, b, r2, b2)
        for r in range(rows)
        for b in range(branches)
        for r2 in range(rows)
        for b2 in range(branches)
        if (r, b) != (r2, b2) and identity[r] == identity[r2]
    }


@pytest.mark.parametrize(
    ("variant", "views", "labelled"), [("S", 1, True), ("M", 2, True), ("SU", 1, False), ("MU", 2, False)]
)
def test_variants_feed_supcon_the_documented_layouts(
    variant: str, views: int, labelled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = make("selfcon", **{"method.variant": variant, "method.exits": ["layer1", "layer2"]})
    assert len(method.views(method.context.config)) == views
    features, labels = captured_call(method, batch_for(method), monkeypatch)
    assert features.shape == (6 * views, 3, 128)  # [V*B, exits + backbone, D]
    torch.testing.assert_close(features.norm(dim=2), torch.ones(6 * views, 3))
    if labelled:
        assert torch.equal(labels, LABELS.repeat(views))
    else:
        assert labels is None
    pairs = positive_pairs(features, labels)
    # Every branch of the same image and view is a positive; in MU the other augmented view is not.
    assert (0, 0, 0, 2) in pairs and (0, 2, 0, 1) in pairs
    if views == 2:
        assert ((0, 0, 6, 0) in pairs) is labelled
    assert ((0, 0, 2, 0) in pairs) is labelled  # images 0 and 2 share label 0


def test_every_branch_gets_gradient_and_heads_are_not_shared() -> None:
    method = make("selfcon", **{"method.exits": ["layer2"], "method.exit_type": "same"})
    network = method.network
    head_ids = [{id(p) for p in head.parameters()} for head in (*network.exit_heads.values(), network.head)]
    assert head_ids[0].isdisjoint(head_ids[1])
    exit_ids = {id(p) for p in network.exits.parameters()}
    assert exit_ids.isdisjoint({id(p) for p in network.backbone.parameters()})
    method(batch_for(method), StepInfo(0, 0, 10))["loss"].backward()
    for part in (network.exits, network.exit_heads, network.head, network.backbone.layer4, network.backbone.conv1):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_evaluation_networks_are_the_backbone_and_each_exit() -> None:
    method = make("selfcon", **{"method.exits": ["layer1", "layer2"]}).eval()
    networks = method.evaluation_networks()
    assert list(networks) == ["backbone", "exit_layer1", "exit_layer2"]
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = method.network.features(images)
        torch.testing.assert_close(networks["backbone"](images), features[-1])
        torch.testing.assert_close(networks["exit_layer1"](images), features[0])


def test_supcon_s_is_single_view_backbone_only_and_drops_lonely_anchors() -> None:
    method = make("supcon_s").eval()
    labels = torch.tensor([0, 1, 0, 2, 2, 0])  # image 1 has no other image of its class
    batch = batch_for(method, labels)
    assert list(batch.views) == ["view1"]
    with torch.no_grad():
        loss = method(batch, StepInfo(0, 0, 10))["loss"]
        embeddings = torch.nn.functional.normalize(method.encoder(batch.views["view1"]), dim=1)
        expected = supcon(embeddings[:, None], labels, 0.1, 0.07, drop_anchors_without_positives=True)
    torch.testing.assert_close(loss, expected)
