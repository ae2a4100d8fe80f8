"""Per-rank epoch loaders with the same number of batches on every rank, for map-style and Parquet sources."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.data.errors import DataError
from pipeline.data.parquet import ParquetShards

Batch = Any


def batch_size_of(batch: Batch) -> int:
    """Return the number of samples in a collated ``(views, labels, indices)`` batch."""
    return int(batch[1].shape[0])


def concat_batches(batches: list[Batch]) -> Batch:
    """Return the collated batches joined along the sample dimension (tensors, dicts, lists, tuples)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {key: concat_batches([batch[key] for batch in batches]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(concat_batches(list(parts)) for parts in zip(*batches, strict=True))
    raise TypeError(f"cannot concatenate batch elements of type {type(first).__name__}")


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Return samples ``start:stop`` of a collated batch."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {key: slice_batch(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(slice_batch(part, start, stop) for part in batch)
    raise TypeError(f"cannot slice batch elements of type {type(batch).__name__}")


def rebatch(batches: Iterator[Batch], batch_size: int, drop_last: bool) -> Iterator[Batch]:
    """Yield full batches of ``batch_size`` from batches of any size (then the remainder unless ``drop_last``).

    Each loader worker ends its stream with a short batch; joining those keeps every batch full.
    """
    pending: list[Batch] = []
    pending_size = 0
    for batch in batches:
        size = batch_size_of(batch)
        if size == batch_size and not pending:
            yield batch
            continue
        pending.append(batch)
        pending_size += size
        while pending_size >= batch_size:
            joined = concat_batches(pending)
            yield slice_batch(joined, 0, batch_size)
            pending_size -= batch_size
            pending = [slice_batch(joined, batch_size, batch_size + pending_size)] if pending_size else []
    if pending and not drop_last:
        yield concat_batches(pending)


class EpochLoader:
    """Batches ``(views, labels, indices)`` of one rank, with ``len`` equal on every rank and constant over epochs."""

    def __init__(
        self,
        loader: DataLoader,
        num_batches: int,
        batch_size: int,
        drop_last: bool,
        sampler: DistributedSampler | None,
        source: Dataset,
    ) -> None:
        self.loader, self.num_batches, self.batch_size, self.drop_last = loader, num_batches, batch_size, drop_last
        self.sampler, self.source = sampler, source

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds this epoch's sample order."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        else:
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        """Return the number of batches per epoch (the same on every rank)."""
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        """Yield this epoch's batches, exactly ``len(self)`` of them."""
        if self.sampler is not None:
            yield from self.loader
            return
        batches = rebatch(iter(self.loader), self.batch_size, self.drop_last)
        for _, batch in zip(range(self.num_batches), batches, strict=False):
            yield batch


def build_loader(
    source: Dataset,
    batch_size: int,
    *,
    rank: int,
    world_size: int,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool = False,
) -> EpochLoader:
    """Return the loader of ``rank``'s share of ``source``: padded like DistributedSampler, or trimmed by drop_last."""
    if batch_size < 1 or num_workers < 0:
        raise DataError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} out of range for world size {world_size}")
    # Workers are re-created each epoch so that their augmentation seeds come from the per-epoch reseeded
    # generator: a resumed run then draws exactly what an uninterrupted run would have drawn.
    options = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": False}
    if isinstance(source, ParquetShards):
        source.shard(rank, world_size)
        source.shuffle, source.seed = shuffle, seed
        fewest, most = source.samples_per_rank_bounds(world_size)
        source.pad_to = None if drop_last else most
        num_batches = fewest // batch_size if drop_last else -(-most // batch_size)
        loader = DataLoader(source, batch_size=batch_size, **options)
        return EpochLoader(loader, num_batches, batch_size, drop_last, None, source)
    sampler = DistributedSampler(source, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    loader = DataLoader(source, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **options)
    return EpochLoader(loader, len(loader), batch_size, drop_last, sampler, source)
