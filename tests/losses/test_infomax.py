"""Deep InfoMax's local–global scores and estimators against brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import dim_infonce, dim_jsd, local_global_scores


def random_scores(batch: int = 4, dim: int = 5, positions: int = 3) -> tuple[torch.Tensor, ...]:
    """Return global [B, D], local [B, D, P] features and their scores."""
    generator = torch.Generator().manual_seed(0)
    global_features = torch.randn(batch, dim, generator=generator)
    local_features = torch.randn(batch, dim, positions, generator=generator)
    return global_features, local_features, local_global_scores(global_features, local_features)


def test_scores_pair_every_global_vector_with_every_local_feature() -> None:
    global_features, local_features, scores = random_scores()
    for i in range(4):
        for j in range(4):
            for p in range(3):
                assert scores[i, j, p] == pytest.approx(float(global_features[i] @ local_features[j, :, p]), abs=1e-5)


def test_infonce_classifies_each_position_against_every_other_images_positions() -> None:
    _, _, scores = random_scores()
    batch, _, positions = scores.shape
    losses = []
    for i in range(batch):
        negatives = [float(scores[i, j, q]) for j in range(batch) if j != i for q in range(positions)]
        for p in range(positions):
            logits = [float(scores[i, i, p]), *negatives]  # the positive first, then the (B - 1) * P negatives
            losses.append(-logits[0] + math.log(sum(math.exp(value) for value in logits)))
    assert float(dim_infonce(scores)) == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_jsd_is_minus_the_jensen_shannon_estimate_over_positive_and_negative_pairs() -> None:
    _, _, scores = random_scores()
    positive, negative = [], []
    for i in range(4):
        for j in range(4):
            for p in range(3):
                (positive if i == j else negative).append(float(scores[i, j, p]))
    softplus = lambda value: math.log1p(math.exp(value))  # noqa: E731 - a one-line reference
    estimate = sum(math.log(2) - softplus(-s) for s in positive) / len(positive) - sum(
        softplus(s) - math.log(2) for s in negative
    ) / len(negative)
    assert float(dim_jsd(scores)) == pytest.approx(-estimate, rel=1e-5)
    # Perfectly separated pairs reach the estimator's ceiling of 2 log 2.
    separated = torch.where(torch.eye(4, dtype=torch.bool)[:, :, None], 50.0, -50.0).expand(4, 4, 3)
    assert float(dim_jsd(separated)) == pytest.approx(-2 * math.log(2), abs=1e-6)


def test_both_estimators_reward_separating_positives_and_reject_a_single_image() -> None:
    separated = torch.where(torch.eye(4, dtype=torch.bool)[:, :, None], 5.0, -5.0).expand(4, 4, 3)
    for estimator in (dim_infonce, dim_jsd):
        assert float(estimator(separated)) < float(estimator(-separated))
        with pytest.raises(ValueError, match="at least 2 images"):
            estimator(torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"global \[B, D\] and local \[B, D, P\]"):
        local_global_scores(torch.zeros(2, 3), torch.zeros(2, 4, 5))
