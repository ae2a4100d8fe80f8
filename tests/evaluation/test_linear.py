"""Linear probe and its metrics against hand-built cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.linear import (
    ProbeSettings,
    class_balanced_indices,
    inverse_frequency_weights,
    train_linear_probe,
)
from pipeline.evaluation.metrics import (
    confusion_matrix,
    ensemble_logits,
    per_class_accuracy,
    shot_accuracy,
    shot_thresholds,
    topk_accuracy,
)


def separable(num_classes: int = 4, per_class: int = 50, dim: int = 16, seed: int = 0) -> tuple:
    """Return features of well-separated Gaussian clusters (one per class) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + torch.randn(labels.shape[0], dim, generator=generator) * 0.5
    return features, labels


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_probe_reaches_the_known_answer_on_separable_features(optimizer: str) -> None:
    features, labels = separable()
    settings = ProbeSettings(optimizer=optimizer, epochs=30, batch_size=32, lr=0.1)
    probe = train_linear_probe(features * 3 + 7, labels, 4, settings)
    assert topk_accuracy(probe(features * 3 + 7), labels, 1) == 100.0


def test_probe_ignores_unlabelled_rows_and_rejects_none() -> None:
    features, labels = separable()
    labels = labels.clone()
    labels[::2] = -1
    probe = train_linear_probe(features, labels, 4, ProbeSettings(epochs=5))
    assert probe.linear.out_features == 4
    with pytest.raises(ValueError, match="labelled training features"):
        train_linear_probe(features, torch.full_like(labels, -1), 4, ProbeSettings(epochs=1))


def test_class_balanced_sampling_draws_classes_uniformly() -> None:
    counts = torch.tensor([500, 100, 20, 5, 1])
    labels = torch.arange(5).repeat_interleave(counts)
    labels = labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(0))]
    draws = class_balanced_indices(labels, 10_000, torch.Generator().manual_seed(1))
    observed = torch.bincount(labels[draws], minlength=5).double()
    expected = 10_000 / 5
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 18.47  # the 0.1% critical value with 4 degrees of freedom
    # Within a class, every sample is reachable: the single sample of class 4 is drawn.
    assert (labels[draws] == 4).any() and draws.max() < labels.shape[0]


def test_inverse_frequency_weights() -> None:
    labels = torch.tensor([0, 0, 0, 1, 3])
    weights = inverse_frequency_weights(labels, 5)
    torch.testing.assert_close(weights, torch.tensor([5 / 9, 5 / 3, 0.0, 5 / 3, 0.0]))


def test_topk_per_class_and_confusion() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 2, 1])
    assert topk_accuracy(logits, labels, 1) == 50.0
    assert topk_accuracy(logits, labels, 2) == 75.0
    predictions = logits.argmax(dim=1)
    per_class = per_class_accuracy(predictions, labels, 4)
    assert per_class[:3].tolist() == [100.0, 0.0, 50.0] and math.isnan(per_class[3])
    assert confusion_matrix(predictions, labels, 3).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def test_many_medium_few_split_is_exact() -> None:
    train_counts = torch.tensor([150, 101, 100, 20, 19, 0])
    per_class = torch.tensor([90.0, 80.0, 70.0, 60.0, 10.0, float("nan")])
    thresholds = shot_thresholds(train_counts)
    assert (thresholds.many, thresholds.few, thresholds.scaled) == (100.0, 20.0, False)
    assert shot_accuracy(per_class, train_counts, thresholds) == {"many": 85.0, "medium": 65.0, "few": 10.0}


def test_thresholds_scale_for_small_data_so_every_group_is_filled() -> None:
    train_counts = torch.tensor([60, 30, 15, 8, 4, 2])
    thresholds = shot_thresholds(train_counts)
    assert (thresholds.many, thresholds.few, thresholds.scaled) == (22.5, 6.0, True)
    groups = shot_accuracy(torch.arange(6.0), train_counts, thresholds)
    assert groups == {"many": 0.5, "medium": 2.5, "few": 4.5}
    assert not shot_thresholds(torch.tensor([5, 5, 3])).scaled  # two distinct counts cannot fill three groups
    unscaled = shot_thresholds(train_counts, scale=False)
    assert shot_accuracy(torch.arange(6.0), train_counts, unscaled)["many"] is None


def test_ensemble_is_the_mean_of_logits() -> None:
    first, second = torch.tensor([[1.0, 4.0]]), torch.tensor([[3.0, 0.0]])
    torch.testing.assert_close(ensemble_logits([first, second]), torch.tensor([[2.0, 2.0]]))


def test_class_balanced_sampler_shards_one_draw_sequence_across_ranks() -> None:
    from pipeline.evaluation.linear_ray import ClassBalancedSampler

    labels = torch.arange(4).repeat_interleave(torch.tensor([40, 10, 5, 1]))
    ranks = [ClassBalancedSampler(labels, rank, 2, seed=3) for rank in range(2)]
    for sampler in ranks:
        sampler.set_epoch(5)
    first, second = (list(sampler) for sampler in ranks)
    assert len(first) == len(second) == 28
    together = torch.tensor([index for pair in zip(first, second, strict=True) for index in pair])
    expected = class_balanced_indices(labels, 56, torch.Generator().manual_seed(3 * 100_003 + 5))
    assert torch.equal(together, expected)
    ranks[0].set_epoch(6)
    assert list(ranks[0]) != first
