"""Build the configured data source of a split, long-tail subsampled for training when configured."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.files import CIFAR, STL10, ImageFolder, ListFile, list_classes
from pipeline.data.longtail import LongTailSubset, long_tail_indices
from pipeline.data.parquet import ParquetShards
from pipeline.data.source import MapSource
from pipeline.data.synthetic import SyntheticShapes

Split = Literal["train", "test"]
Transform = Callable[[Any], Any] | None
Source = MapSource | ParquetShards
SYNTHETIC_SPLIT_OFFSETS = {"train": 0, "test": 1}


def _root(data_cfg: DataConfig) -> str:
    """Return data.root, or raise DataError naming the key when the source needs it and it is unset."""
    if not data_cfg.root:
        raise DataError(f"data.root is required for source {data_cfg.source}")
    return data_cfg.root


def _existing(path: str, keys: str, is_dir: bool) -> str:
    """Return ``path`` if it exists, else raise DataError naming it and the config keys it came from."""
    if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
        raise DataError(f"{'directory' if is_dir else 'file'} not found: {path} (from {keys})")
    return path


def _synthetic(data_cfg: DataConfig, split: Split, transform: Transform) -> SyntheticShapes:
    """Return the procedural shapes of a split (long-tailed at generation for training)."""
    synthetic = data_cfg.synthetic
    return SyntheticShapes(
        num_samples=synthetic.num_train if split == "train" else synthetic.num_test,
        image_size=data_cfg.image_size,
        num_superclasses=synthetic.num_superclasses,
        classes_per_superclass=synthetic.classes_per_superclass,
        seed=data_cfg.seed,
        split_offset=SYNTHETIC_SPLIT_OFFSETS[split],
        long_tail_ratio=data_cfg.long_tail_ratio if split == "train" else None,
        transform=transform,
    )


def _map_style(data_cfg: DataConfig, split: Split, transform: Transform) -> MapSource:
    """Return a file-based map-style source of a split, before any long-tail subsampling."""
    root, source = _root(data_cfg), data_cfg.source
    if source in ("cifar10", "cifar100"):
        return CIFAR(root, source, split == "train", data_cfg.download, transform)
    if source == "stl10":
        stl_split = "test" if split == "test" else "train+unlabeled" if data_cfg.stl10_unlabeled else "train"
        return STL10(root, stl_split, data_cfg.download, transform)
    if source == "image_folder":
        train_dir = _existing(os.path.join(root, data_cfg.train_dir), "data.root + data.train_dir", is_dir=True)
        if split == "train":
            return ImageFolder(train_dir, transform, data_cfg.skip_corrupt)
        test_dir = _existing(os.path.join(root, data_cfg.test_dir), "data.root + data.test_dir", is_dir=True)
        return ImageFolder(test_dir, transform, data_cfg.skip_corrupt, classes=list_classes(train_dir))
    if source == "list_file":
        key = f"data.{split}_list"
        list_name = data_cfg.train_list if split == "train" else data_cfg.test_list
        if not list_name:
            raise DataError(f"{key} is required for source list_file")
        _existing(root, "data.root", is_dir=True)
        list_path = _existing(os.path.join(root, list_name), f"data.root + {key}", is_dir=False)
        return ListFile(root, list_path, transform, data_cfg.skip_corrupt)
    raise DataError(f"data.source = {source!r} is not a map-style file source")


def _parquet(data_cfg: DataConfig, split: Split, transform: Transform) -> ParquetShards:
    """Return the Parquet shards of a split (rows outside the long-tail subset filtered out for training)."""
    path = _existing(os.path.join(_root(data_cfg), split), "data.root", is_dir=True)
    shards = ParquetShards(path, transform, data_cfg.skip_corrupt, data_cfg.seed)
    if split == "train" and data_cfg.long_tail_ratio is not None:
        shards.select(long_tail_indices(shards.labels, data_cfg.long_tail_ratio))
    return shards


def build_source(data_cfg: DataConfig, split: Split, transform: Transform = None) -> Source:
    """Return the configured source of ``split`` yielding ``(transform(image), label, index)``."""
    if split not in SYNTHETIC_SPLIT_OFFSETS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if data_cfg.source == "synthetic":
        return _synthetic(data_cfg, split, transform)
    if data_cfg.source == "parquet":
        return _parquet(data_cfg, split, transform)
    source = _map_style(data_cfg, split, transform)
    if split == "train" and data_cfg.long_tail_ratio is not None:
        return LongTailSubset(source, data_cfg.long_tail_ratio)
    return source
