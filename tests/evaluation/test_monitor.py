"""kNN monitor on one worker: index placement, unlabelled bank entries, agreement with the pure kNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.knn import knn_top1
from pipeline.evaluation.monitor import gather_by_index, knn_monitor


class Identity(nn.Module):
    """Backbone stand-in whose features are its inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def batches(data: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, size: int) -> list:
    """Return (images, labels, indices) batches visiting ``order``."""
    return [
        (data[order[i : i + size]], labels[order[i : i + size]], order[i : i + size])
        for i in range(0, len(order), size)
    ]


def test_gather_by_index_places_rows_and_tolerates_repeats() -> None:
    values = torch.tensor([[1.0], [2.0], [3.0], [2.0]])
    placed = gather_by_index(values, torch.tensor([2, 0, 1, 0]), 3)
    assert placed.squeeze(1).tolist() == [2.0, 3.0, 1.0]


def test_monitor_matches_pure_knn_and_ignores_unlabelled_bank_entries() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(60, 8, generator=generator), dim=1)
    bank_labels = torch.randint(0, 3, (60,), generator=generator)
    queries = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    query_labels = torch.randint(0, 3, (20,), generator=generator)
    order = torch.randperm(60, generator=generator)
    with_unlabelled = bank_labels.clone()
    with_unlabelled[:10] = -1

    top1 = knn_monitor(
        Identity(),
        batches(bank, with_unlabelled, order, 16),
        with_unlabelled,
        batches(queries, query_labels, torch.arange(20), 7),
        query_labels,
        num_classes=3,
        k=5,
        temperature=0.1,
        device=torch.device("cpu"),
    )
    expected = knn_top1(bank[10:], bank_labels[10:], queries, query_labels, 3, k=5, temperature=0.1)
    assert top1 == expected
