"""kNN monitor on one worker: index placement, unlabelled bank entries, agreement with the pure kNN; gathers on two."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.knn import knn_top1
from pipeline.evaluation.monitor import extract_features, gather_by_index, knn_monitor, sharded_top1


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


def test_sharded_top1_counts_a_padded_repeat_once() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    # Sample 3 is seen twice (a padding repeat), right both times; sample 1 is wrong: 3 of 4 samples right.
    predictions = torch.tensor([0, 0, 2, 1, 1])
    assert sharded_top1(predictions, torch.tensor([0, 1, 2, 3, 3]), labels) == 75.0


def test_monitor_matches_pure_knn_and_ignores_unlabelled_bank_entries() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(60, 8, generator=generator), dim=1)
    bank_labels = torch.randint(0, 3, (60,), generator=generator)
    queries = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    query_labels = torch.randint(0, 3, (20,), generator=generator)
    order = torch.randperm(60, generator=generator)
    with_unlabelled = bank_labels.clone()
    with_unlabelled[:10] = -1

    query_features, query_index = extract_features(
        Identity(), batches(queries, query_labels, torch.arange(20), 7), torch.device("cpu"), normalize=False
    )
    top1 = knn_monitor(
        Identity(),
        batches(bank, with_unlabelled, order, 16),
        with_unlabelled,
        query_features,
        query_index,
        query_labels,
        num_classes=3,
        k=5,
        temperature=0.1,
        device=torch.device("cpu"),
    )
    expected = knn_top1(bank[10:], bank_labels[10:], queries, query_labels, 3, k=5, temperature=0.1)
    assert top1 == expected


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank r holds rows of indices r, r+2, ... (rank 1 one row more, a padded shard); gather to rank 0 and to all."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        indices = torch.arange(rank, 7, 2)  # rank 0: 0 2 4 6, rank 1: 1 3 5
        values = indices[:, None].float() * torch.tensor([[1.0, 10.0]])  # [n, 2]
        to_rank0 = gather_by_index(values, indices, 7, destination=0)
        everywhere = gather_by_index(values, indices, 7)
        torch.save({"to_rank0": to_rank0, "everywhere": everywhere}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_to_one_rank_gives_it_every_row_and_the_others_none(tmp_path: Path) -> None:
    mp.spawn(_gather_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    expected = torch.arange(7.0)[:, None] * torch.tensor([[1.0, 10.0]])
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert torch.equal(rank0["to_rank0"], expected) and rank1["to_rank0"] is None
    assert torch.equal(rank0["everywhere"], expected) and torch.equal(rank1["everywhere"], expected)
