"""Epoch loaders: equal batch counts on every rank, full batches, coverage, nested views and epoch reshuffles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.errors import DataError
from pipeline.data.loader import build_loader, rebatch
from pipeline.data.parquet import ParquetShards
from pipeline.data.synthetic import SyntheticShapes


def two_views(image) -> dict:
    """Return a nested dict of tensors like a multi-view transform does."""
    pixels = torch.as_tensor(np.array(image)).permute(2, 0, 1)
    return {"query": pixels.float(), "key": {"image": pixels, "mean": pixels.float().mean()}}


def epoch_indices(loader, epoch: int) -> list[int]:
    """Return the sample indices of one epoch, checking each batch's labels and views."""
    loader.set_epoch(epoch)
    indices = []
    for views, labels, index in loader:
        assert views["query"].shape[0] == views["key"]["image"].shape[0] == labels.shape[0] == index.shape[0]
        np.testing.assert_array_equal(labels.numpy(), loader.source.labels[index.numpy()])
        indices.extend(index.tolist())
    return indices


def test_rebatch_joins_short_batches() -> None:
    batches = [(torch.zeros(n), torch.arange(n), torch.arange(n)) for n in (3, 5, 2, 4)]
    full = [len(batch[1]) for batch in rebatch(iter(batches), 4, drop_last=True)]
    assert full == [4, 4, 4]
    assert [len(batch[1]) for batch in rebatch(iter(batches), 4, drop_last=False)] == [4, 4, 4, 2]
    joined = list(rebatch(iter([(torch.arange(3), torch.arange(3), torch.arange(3))] * 2), 4, drop_last=False))
    assert joined[0][0].tolist() == [0, 1, 2, 0] and joined[1][0].tolist() == [1, 2]


@pytest.mark.parametrize("drop_last", [True, False])
def test_map_style_ranks_have_equal_lengths_and_cover_everything(drop_last: bool) -> None:
    source = SyntheticShapes(23, 16, 1, 3, 0, 0, transform=two_views)
    loaders = [
        build_loader(source, 3, rank=rank, world_size=3, shuffle=True, drop_last=drop_last, seed=5, num_workers=0)
        for rank in range(3)
    ]
    # 23 samples over 3 ranks: 8 each after padding, so 2 full batches of 3 plus a last one of 2.
    assert [len(loader) for loader in loaders] == [2 if drop_last else 3] * 3
    seen = [index for loader in loaders for index in epoch_indices(loader, 0)]
    if not drop_last:
        assert set(seen) == set(range(23))
    assert sum(len(list(loader)) for loader in loaders) == 3 * len(loaders[0])
    first, second = epoch_indices(loaders[0], 0), epoch_indices(loaders[0], 1)
    assert first != second


@pytest.mark.parametrize("num_workers", [0, 2])
def test_parquet_training_loader_gives_full_equal_batches(shard_dir: Path, num_workers: int) -> None:
    loaders = []
    for rank in range(2):
        shards = ParquetShards(shard_dir, transform=two_views)
        loaders.append(
            build_loader(
                shards, 4, rank=rank, world_size=2, shuffle=True, drop_last=True, seed=9, num_workers=num_workers
            )
        )
    fewest, _ = loaders[0].source.samples_per_rank_bounds(2)
    assert len(loaders[0]) == len(loaders[1]) == fewest // 4
    orders = []
    for epoch in (0, 1):
        seen = []
        for loader in loaders:
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) and all(batch[1].shape[0] == 4 for batch in batches)
            seen.extend(index for batch in batches for index in batch[2].tolist())
        assert len(seen) == len(set(seen))
        orders.append(seen)
    assert orders[0] != orders[1]


def test_parquet_eval_loader_pads_to_equal_lengths_and_sees_everything(shard_dir: Path) -> None:
    loaders = [
        build_loader(
            ParquetShards(shard_dir, transform=two_views),
            8,
            rank=rank,
            world_size=3,
            shuffle=False,
            drop_last=False,
            seed=0,
            num_workers=0,
        )
        for rank in range(3)
    ]
    _, most = loaders[0].source.samples_per_rank_bounds(3)
    assert len({len(loader) for loader in loaders}) == 1 and len(loaders[0]) == -(-most // 8)
    seen = [index for loader in loaders for index in epoch_indices(loader, 0)]
    assert set(seen) == set(range(60)) and len(seen) == 3 * most


def test_bad_rank_or_batch_size_raise() -> None:
    source = SyntheticShapes(8, 16, 1, 2, 0, 0)
    with pytest.raises(DataError, match="rank 2 out of range for world size 2"):
        build_loader(source, 4, rank=2, world_size=2, shuffle=True, drop_last=True, seed=0, num_workers=0)
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        build_loader(source, 0, rank=0, world_size=1, shuffle=True, drop_last=True, seed=0, num_workers=0)
