"""HCSC's concentration, selection probabilities and losses against brute-force references written with loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import (
    cluster_concentration,
    icsc,
    icsc_selection_probs,
    info_nce,
    pcsc,
    pcsc_negative_ids,
    pcsc_selection_probs,
)


def unit(*shape: int, seed: int) -> torch.Tensor:
    """Return random float64 rows L2-normalised along the last dimension."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def concentration_reference(sq_distances: np.ndarray, assignments: np.ndarray, clusters: int, temperature: float):
    """Return PCL's concentration one cluster at a time, with numpy's percentile."""
    phi = np.zeros(clusters)
    for c in range(clusters):
        members = sq_distances[assignments == c]
        if len(members) > 1:
            phi[c] = np.sqrt(members).mean() / math.log(len(members) + 10)
    largest = max(phi[c] for c in range(clusters) if (assignments == c).sum() > 1)
    for c in range(clusters):
        if (assignments == c).sum() <= 1:
            phi[c] = largest
    phi = phi.clip(np.percentile(phi, 10), np.percentile(phi, 90))
    return temperature * phi / phi.mean()


def test_concentration_matches_reference() -> None:
    rng = np.random.default_rng(0)
    assignments = np.concatenate([rng.integers(0, 9, size=200), [9]])  # cluster 9 has one member, 10 none
    sq_distances = rng.random(201) * 2
    mine = cluster_concentration(torch.from_numpy(sq_distances), torch.from_numpy(assignments), 11, 0.2)
    expected = concentration_reference(sq_distances, assignments, 11, 0.2)
    torch.testing.assert_close(mine, torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.mean(), torch.tensor(0.2, dtype=torch.float64))


def test_concentration_of_clusters_without_spread_is_the_temperature() -> None:
    assignments = torch.tensor([0, 0, 1, 1, 2])
    phi = cluster_concentration(torch.zeros(5, dtype=torch.float64), assignments, 3, 0.2)
    torch.testing.assert_close(phi, torch.full((3,), 0.2, dtype=torch.float64))


def test_icsc_selection_probs_match_reference() -> None:
    queue, centroids = unit(7, 5, seed=1), unit(4, 5, seed=2)
    concentration = torch.tensor([0.1, 0.0005, 0.3, 0.2], dtype=torch.float64)
    clusters = torch.tensor([2, 0, 1])
    mine = icsc_selection_probs(queue, centroids, concentration, clusters)
    expected = torch.zeros(3, 7, dtype=torch.float64)
    for i in range(3):
        for j in range(7):
            scores = [float(queue[j] @ centroids[c]) / max(float(concentration[c]), 1e-3) for c in range(4)]
            top = max(scores)
            expected[i, j] = 1 - math.exp(scores[int(clusters[i])] - top) / sum(math.exp(s - top) for s in scores)
    torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)


def icsc_reference(q, k, queue, masks, temperature) -> torch.Tensor:
    """Return the instance loss one query, one negative and one level at a time."""
    total = q.new_zeros(())
    for mask in masks:
        for i in range(q.shape[0]):
            logits = [torch.dot(q[i], k[i]) / temperature]
            logits += [torch.dot(q[i], queue[j]) * mask[i, j] / temperature for j in range(queue.shape[0])]
            total = total - (logits[0] - torch.log(sum(torch.exp(logit) for logit in logits))) / q.shape[0]
    return total


def test_icsc_sums_masked_infonce_over_levels_and_none_is_infonce() -> None:
    q, k, queue = unit(4, 6, seed=3), unit(4, 6, seed=4), unit(9, 6, seed=5)
    generator = torch.Generator().manual_seed(6)
    masks = [torch.bernoulli(torch.full((4, 9), 0.6, dtype=torch.float64), generator=generator) for _ in range(3)]
    torch.testing.assert_close(icsc(q, k, queue, masks, 0.2), icsc_reference(q, k, queue, masks, 0.2))
    ones = [torch.ones(4, 9, dtype=torch.float64)] * 2
    torch.testing.assert_close(icsc(q, k, queue, ones, 0.2), 2 * info_nce(q, k, queue, 0.2))
    torch.testing.assert_close(icsc(q, k, queue, None, 0.2), info_nce(q, k, queue, 0.2))
    with pytest.raises(ValueError, match="masks must be"):
        icsc(q, k, queue, [torch.ones(4, 8)], 0.2)


def test_negative_prototypes_exclude_batch_positives_and_keep_the_highest_id() -> None:
    ids = pcsc_negative_ids(torch.tensor([0, 3, 3, 1]), 6)
    assert ids.tolist() == [2, 4, 5]
    assert pcsc_negative_ids(torch.tensor([0, 1]), 3).tolist() == [2]


def test_pcsc_selection_probs_match_reference() -> None:
    similarity = unit(6, 3, seed=7)  # any [N_l, N_{l+1}] similarity table
    upper = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)
    negatives, parents = torch.tensor([1, 4, 5]), torch.tensor([2, 0])
    mine = pcsc_selection_probs(similarity, upper, parents, negatives)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for i in range(2):
        for m, t in enumerate(negatives.tolist()):
            scores = [float(similarity[t, u] / upper[u]) for u in range(3)]
            expected[i, m] = 1 - math.exp(scores[int(parents[i])]) / sum(math.exp(s) for s in scores)
    torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)


def test_pcsc_matches_reference_with_and_without_mask() -> None:
    q, centroids = unit(3, 5, seed=8), unit(6, 5, seed=9)
    concentration = torch.tensor([0.1, 0.2, 0.15, 0.3, 0.25, 0.12], dtype=torch.float64)
    positives, negatives = torch.tensor([0, 3, 0]), torch.tensor([1, 2, 4, 5])
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.float64)
    for use_mask in (None, mask):
        total = q.new_zeros(())
        for i in range(3):
            p = int(positives[i])
            logits = [torch.dot(q[i], centroids[p]) / concentration[p]]
            for m, t in enumerate(negatives.tolist()):
                keep = 1.0 if use_mask is None else use_mask[i, m]
                logits.append(torch.dot(q[i], centroids[t]) * keep / concentration[t])
            total = total - (logits[0] - torch.log(sum(torch.exp(logit) for logit in logits))) / 3
        torch.testing.assert_close(pcsc(q, centroids, concentration, positives, negatives, use_mask), total)
