"""Parquet shards of encoded images: a writer and a sharded, shuffling iterable reader.

A shard directory holds ``part-00000.parquet``, ... with columns ``image`` (encoded bytes), ``label`` and
``index`` (int64), rows in a seeded random order, plus ``manifest.json``. The reader's unit of work is
one (shard, row group): each epoch the units are permuted by (seed, epoch) identically on every rank, unit
i goes to rank i % world_size and, within a rank, unit j to loader worker j % num_workers.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.data.errors import DataError
from pipeline.data.source import CorruptImagePolicy, ImageFormat, MapSource, count_classes, decode_image

MANIFEST = "manifest.json"
MANIFEST_KEYS = ("num_rows", "num_classes", "shards")
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("index", pa.int64())])


def shard_name(number: int) -> str:
    """Return the file name of shard ``number``."""
    return f"part-{number:05d}.parquet"


def write_shards(
    source: MapSource,
    out_dir: str | os.PathLike,
    rows_per_shard: int,
    row_group_size: int,
    seed: int,
    image_format: ImageFormat,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``source`` as shuffled Parquet shards plus a manifest into ``out_dir``; return the manifest.

    File-based sources contribute their files' bytes unchanged; others are encoded per ``image_format``.
    ``progress`` is called with the number of rows written so far after each row group.
    """
    if rows_per_shard < 1 or row_group_size < 1:
        raise DataError(f"rows_per_shard and row_group_size must be >= 1, got {rows_per_shard}, {row_group_size}")
    if image_format not in ("png", "jpeg"):
        raise DataError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(source))
    shards, written = [], 0
    for number, shard_start in enumerate(range(0, order.size, rows_per_shard)):
        shard_rows = order[shard_start : shard_start + rows_per_shard]
        with pq.ParquetWriter(out / shard_name(number), SCHEMA) as writer:
            for group_start in range(0, shard_rows.size, row_group_size):
                rows = shard_rows[group_start : group_start + row_group_size]
                images = [source.encoded_image(int(index), image_format) for index in rows]
                columns = [pa.array(images, pa.binary()), pa.array(source.labels[rows]), pa.array(rows, pa.int64())]
                writer.write_table(pa.Table.from_arrays(columns, schema=SCHEMA), row_group_size=row_group_size)
                written += rows.size
                if progress is not None:
                    progress(written)
        shards.append({"file": shard_name(number), "rows": int(shard_rows.size)})
    coarse = source.coarse_labels
    manifest = {
        "num_rows": len(source),
        "num_classes": source.num_classes,
        "class_counts": source.class_counts().tolist(),
        "shards": shards,
        "source": source.describe(),
        "image_format": image_format,
        "seed": seed,
        "coarse_labels": None if coarse is None else coarse.tolist(),
    }
    # The manifest goes last and atomically: its presence means every shard is complete.
    partial = out / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest))
    partial.replace(out / MANIFEST)
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    """Return the validated manifest of a shard directory, or raise DataError naming the file."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"Parquet manifest not found: {manifest_path} (write it with python -m pipeline.data.convert)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"invalid Parquet manifest {manifest_path}: {exc}") from exc
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise DataError(f"invalid Parquet manifest {manifest_path}: missing {', '.join(missing)}")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not all(
        isinstance(shard, dict) and {"file", "rows"} <= set(shard) for shard in shards
    ):
        raise DataError(f"invalid Parquet manifest {manifest_path}: 'shards' must list {{'file', 'rows'}} entries")
    return manifest


class ParquetShards(IterableDataset):
    """Iterable source over a shard directory, yielding ``(image, label, index)`` for this rank and worker.

    ``indices`` (sorted, unique) keeps only those samples and renumbers them 0..M-1 in that order.
    Configure with :meth:`shard`, ``shuffle``, ``pad_to`` and :meth:`set_epoch` before iterating.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        seed: int = 0,
        indices: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.transform, self.seed = transform, seed
        self.policy = CorruptImagePolicy(skip_corrupt)
        self.manifest = read_manifest(self.path)
        self.shard_files = [str(self.path / shard["file"]) for shard in self.manifest["shards"]]
        self.num_classes = int(self.manifest["num_classes"])
        self._read_columns()
        self.select(indices)
        self.rank, self.world_size, self.shuffle, self.pad_to = 0, 1, True, None
        # Shared memory, so that loader workers that persist across epochs see set_epoch's value.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def _read_columns(self) -> None:
        """Read the label and index columns and the row-group layout of every shard."""
        labels, indices, unit_shard, unit_group, unit_rows = [], [], [], [], []
        for number, (file, shard) in enumerate(zip(self.shard_files, self.manifest["shards"], strict=True)):
            try:
                with pq.ParquetFile(file) as parquet:
                    table = parquet.read(columns=["label", "index"])
                    metadata = parquet.metadata
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"cannot read Parquet shard {file}: {exc}") from exc
            if table.num_rows != shard["rows"]:
                raise DataError(f"Parquet shard {file} has {table.num_rows} rows, its manifest says {shard['rows']}")
            labels.append(table.column("label").to_numpy())
            indices.append(table.column("index").to_numpy())
            groups = metadata.num_row_groups
            unit_shard.append(np.full(groups, number))
            unit_group.append(np.arange(groups))
            unit_rows.append([metadata.row_group(group).num_rows for group in range(groups)])
        total = int(self.manifest["num_rows"])
        self.row_label = np.concatenate(labels).astype(np.int64)
        self.row_index = np.concatenate(indices).astype(np.int64)
        valid = self.row_index.size == total and (total == 0 or self.row_index.min() >= 0)
        if not valid or np.any(np.bincount(self.row_index, minlength=total) != 1):
            raise DataError(f"Parquet shards in {self.path}: the index column is not a permutation of 0..{total - 1}")
        self.unit_shard, self.unit_group = np.concatenate(unit_shard), np.concatenate(unit_group)
        self.unit_rows = np.concatenate(unit_rows).astype(np.int64)
        self.unit_start = np.concatenate([[0], np.cumsum(self.unit_rows)[:-1]]).astype(np.int64)
        shard_rows = np.array([shard["rows"] for shard in self.manifest["shards"]], dtype=np.int64)
        shard_start = np.concatenate([[0], np.cumsum(shard_rows)[:-1]])
        self.unit_row_in_shard = self.unit_start - shard_start[self.unit_shard]
        self.all_labels = np.empty(total, dtype=np.int64)
        self.all_labels[self.row_index] = self.row_label

    def select(self, indices: np.ndarray | None) -> None:
        """Keep only the samples of sorted unique ``indices`` (all when None), renumbered 0..M-1 in that order."""
        total = self.all_labels.size
        kept = np.arange(total) if indices is None else np.asarray(indices, dtype=np.int64)
        if kept.size and (kept.min() < 0 or kept.max() >= total or np.any(np.diff(kept) <= 0)):
            raise DataError(f"Parquet subset of {self.path} must be sorted unique indices in [0, {total})")
        self.kept = kept
        keep = np.zeros(total, dtype=bool)
        keep[kept] = True
        self.row_keep = keep[self.row_index]
        self.row_new_index = np.searchsorted(kept, self.row_index)
        unit_of_row = np.repeat(np.arange(self.unit_rows.size), self.unit_rows)
        self.unit_kept = np.bincount(unit_of_row, weights=self.row_keep, minlength=self.unit_rows.size).astype(np.int64)
        self.labels = self.all_labels[kept]
        coarse = self.manifest.get("coarse_labels")
        if coarse is not None and len(coarse) != total:
            raise DataError(f"Parquet manifest {self.path / MANIFEST}: {len(coarse)} coarse labels for {total} rows")
        self.coarse_labels = None if coarse is None else np.asarray(coarse, dtype=np.int64)[kept]

    @property
    def skipped(self) -> int:
        """Return how many unreadable images this process has skipped."""
        return self.policy.skipped

    def class_counts(self) -> np.ndarray:
        """Return the number of labelled samples per class [C]."""
        return count_classes(self.labels, self.num_classes)

    def describe(self) -> str:
        """Return e.g. 'parquet /data/shards/train: 50000 images, 10 classes (from: cifar10 train ...)'."""
        origin = self.manifest.get("source", "unknown source")
        return f"parquet {self.path}: {len(self)} images, {self.num_classes} classes (from: {origin})"

    def __len__(self) -> int:
        """Return the number of samples over all ranks."""
        return int(self.kept.size)

    def shard(self, rank: int, world_size: int) -> None:
        """Make iteration yield only the units of ``rank`` among ``world_size`` ranks."""
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} out of range for world size {world_size}")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the unit permutation and the row shuffles."""
        self._epoch.fill_(epoch)

    def _units(self, epoch: int) -> np.ndarray:
        """Return the non-empty units in this epoch's order (permuted by (seed, epoch) when shuffling)."""
        units = np.flatnonzero(self.unit_kept > 0)
        return np.random.default_rng([self.seed, epoch]).permutation(units) if self.shuffle else units

    def rank_units(self, rank: int, world_size: int, epoch: int) -> np.ndarray:
        """Return the units that ``rank`` reads in ``epoch``."""
        return self._units(epoch)[rank::world_size]

    def num_samples(self, rank: int, world_size: int, epoch: int) -> int:
        """Return how many samples ``rank`` reads in ``epoch`` (before padding), from metadata alone."""
        return int(self.unit_kept[self.rank_units(rank, world_size, epoch)].sum())

    def samples_per_rank_bounds(self, world_size: int) -> tuple[int, int]:
        """Return the fewest and most samples any rank can read in any epoch (exact when not shuffling)."""
        if not self.shuffle:
            counts = [self.num_samples(rank, world_size, 0) for rank in range(world_size)]
            return min(counts), max(counts)
        sizes = np.sort(self.unit_kept[self.unit_kept > 0])
        fewest, most = sizes.size // world_size, -(-sizes.size // world_size)
        return int(sizes[:fewest].sum()), int(sizes[sizes.size - most :].sum())

    def pieces(self, epoch: int) -> list[tuple[int, int]]:
        """Return this rank's ``(unit, rows to read)`` in ``epoch``, repeating its own rows up to ``pad_to``."""
        units = self.rank_units(self.rank, self.world_size, epoch)
        pieces = [(int(unit), int(self.unit_kept[unit])) for unit in units]
        deficit = (self.pad_to or 0) - sum(rows for _, rows in pieces)
        # Like DistributedSampler's padding: repeat samples (this rank's own, else the epoch's first) to even out ranks.
        repeat = units if units.size else self._units(epoch)
        position = 0
        while deficit > 0:
            unit = int(repeat[position % repeat.size])
            rows = min(int(self.unit_kept[unit]), deficit)
            pieces.append((unit, rows))
            deficit -= rows
            position += 1
        return pieces

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        """Yield ``(image, label, index)`` for this rank's and loader worker's pieces of the current epoch."""
        epoch = int(self._epoch.item())
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        files: dict[int, pq.ParquetFile] = {}
        try:
            for unit, rows in self.pieces(epoch)[worker_id::num_workers]:
                yield from self._read_unit(unit, rows, epoch, files)
        finally:
            for file in files.values():
                file.close()

    def _read_unit(
        self, unit: int, rows: int, epoch: int, files: dict[int, pq.ParquetFile]
    ) -> Iterator[tuple[Any, int, int]]:
        """Yield the first ``rows`` kept rows of a unit (a shard's row group), shuffled when shuffling."""
        shard, group, start = int(self.unit_shard[unit]), int(self.unit_group[unit]), int(self.unit_start[unit])
        file = self.shard_files[shard]
        try:
            if shard not in files:
                files[shard] = pq.ParquetFile(file)
            images = files[shard].read_row_group(group, columns=["image"]).column("image").to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read row group {group} of Parquet shard {file}: {exc}") from exc
        order = np.flatnonzero(self.row_keep[start : start + self.unit_rows[unit]])
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, unit]).permutation(order)
        group_offset = int(self.unit_row_in_shard[unit])

        def load(position: int) -> PIL.Image.Image:
            return decode_image(io.BytesIO(images[order[position]]))

        def locate(position: int) -> str:
            return f"{file} row {group_offset + int(order[position])}"

        for position in range(rows):
            image, found = self.policy.first_readable(position, order.size, load, locate)
            row = start + int(order[found])
            if self.transform is not None:
                image = self.transform(image)
            yield image, int(self.row_label[row]), int(self.row_new_index[row])
