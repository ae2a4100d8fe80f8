"""Parquet shards: writing, manifest, rank and worker splitting, long-tail selection, bad files and corrupt rows."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from pipeline.config import DataConfig
from pipeline.data import convert
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.longtail import long_tail_indices
from pipeline.data.parquet import SCHEMA, ParquetShards, write_shards
from pipeline.data.synthetic import SyntheticShapes


def read_all(shards: ParquetShards, rank: int, world_size: int, epoch: int) -> list[tuple[np.ndarray, int, int]]:
    """Return every ``(pixels, label, index)`` one rank reads in one epoch."""
    shards.shard(rank, world_size)
    shards.set_epoch(epoch)
    return [(np.asarray(image), label, index) for image, label, index in shards]


def test_manifest_and_shard_layout(shard_dir: Path, synthetic_source: SyntheticShapes) -> None:
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["num_rows"] == 60 and manifest["num_classes"] == 6
    assert [shard["rows"] for shard in manifest["shards"]] == [25, 25, 10]
    assert manifest["class_counts"] == synthetic_source.class_counts().tolist()
    assert manifest["coarse_labels"] == synthetic_source.coarse_labels.tolist()
    first = pq.ParquetFile(shard_dir / "part-00000.parquet")
    assert first.metadata.num_row_groups == 3 and first.schema_arrow.equals(SCHEMA)
    rows = pq.read_table(shard_dir / "part-00000.parquet", columns=["index"]).column("index").to_numpy()
    assert not np.array_equal(rows, np.sort(rows))


def test_two_ranks_read_every_sample_once_with_lossless_pixels(
    shard_dir: Path, synthetic_source: SyntheticShapes
) -> None:
    shards = ParquetShards(shard_dir, seed=1)
    np.testing.assert_array_equal(shards.labels, synthetic_source.labels)
    np.testing.assert_array_equal(shards.coarse_labels, synthetic_source.coarse_labels)
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            samples = read_all(shards, rank, 2, epoch)
            assert len(samples) == shards.num_samples(rank, 2, epoch)
            seen.extend(samples)
        assert sorted(index for _, _, index in seen) == list(range(60))
        for pixels, label, index in seen:
            assert label == synthetic_source.labels[index]
            np.testing.assert_array_equal(pixels, np.asarray(synthetic_source.load_image(index)))


def test_epochs_permute_units_and_rows_but_eval_order_is_fixed(shard_dir: Path) -> None:
    shards = ParquetShards(shard_dir)
    orders = [[index for _, _, index in read_all(shards, 0, 1, epoch)] for epoch in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])
    shards.shuffle = False
    fixed = [[index for _, _, index in read_all(shards, 0, 1, epoch)] for epoch in (0, 1)]
    file_order = np.concatenate(
        [
            pq.read_table(path, columns=["index"]).column("index").to_numpy()
            for path in sorted(shard_dir.glob("*.parquet"))
        ]
    )
    assert fixed[0] == fixed[1] == file_order.tolist()


def test_two_ranks_with_two_loader_workers_cover_every_sample_once(shard_dir: Path) -> None:
    seen: Counter[int] = Counter()
    for rank in (0, 1):
        shards = ParquetShards(shard_dir, transform=np.asarray, seed=2)
        shards.shard(rank, 2)
        shards.set_epoch(3)
        loader = DataLoader(shards, batch_size=4, num_workers=2)
        for images, labels, indices in loader:
            assert images.shape[1:] == (16, 16, 3)
            np.testing.assert_array_equal(labels.numpy(), shards.labels[indices.numpy()])
            seen.update(indices.tolist())
    assert sorted(seen) == list(range(60)) and set(seen.values()) == {1}


def test_padding_repeats_own_rows_up_to_target(shard_dir: Path) -> None:
    shards = ParquetShards(shard_dir)
    fewest, most = shards.samples_per_rank_bounds(3)
    # Units hold 10, 10, 5, 10, 10, 5, 10 rows: a rank gets 2 or 3 of them.
    assert (fewest, most) == (5 + 5, 10 + 10 + 10)
    shards.pad_to = most
    for rank in range(3):
        own = shards.num_samples(rank, 3, 0)
        samples = read_all(shards, rank, 3, 0)
        indices = [index for _, _, index in samples]
        assert len(indices) == most and len(set(indices)) == own


def test_bounds_without_shuffle_are_exact(shard_dir: Path) -> None:
    shards = ParquetShards(shard_dir)
    shards.shuffle = False
    counts = [shards.num_samples(rank, 2, 0) for rank in (0, 1)]
    assert shards.samples_per_rank_bounds(2) == (min(counts), max(counts))
    assert sum(counts) == 60


def test_long_tail_selection_renumbers_rows(shard_dir: Path, synthetic_source: SyntheticShapes) -> None:
    data_cfg = DataConfig(source="parquet", root=str(shard_dir.parent / "split_root"), long_tail_ratio=4.0)
    (shard_dir.parent / "split_root").mkdir(exist_ok=True)
    for split in ("train", "test"):
        shutil.copytree(shard_dir, shard_dir.parent / "split_root" / split, dirs_exist_ok=True)
    train, test = build_source(data_cfg, "train"), build_source(data_cfg, "test")
    kept = long_tail_indices(synthetic_source.labels, 4.0)
    assert len(train) == kept.size and len(test) == 60
    np.testing.assert_array_equal(train.labels, synthetic_source.labels[kept])
    samples = read_all(train, 0, 1, 0)
    assert sorted(index for _, _, index in samples) == list(range(kept.size))
    for pixels, label, index in samples:
        assert label == train.labels[index]
        np.testing.assert_array_equal(pixels, np.asarray(synthetic_source.load_image(int(kept[index]))))


def test_missing_or_invalid_manifest_and_shard_are_named(shard_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"manifest not found: .*manifest\.json"):
        ParquetShards(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"invalid Parquet manifest .*manifest\.json"):
        ParquetShards(tmp_path)
    (tmp_path / "manifest.json").write_text('{"num_rows": 1, "num_classes": 1, "shards": [{"file": "x"}]}')
    with pytest.raises(DataError, match=r"manifest\.json: 'shards' must list"):
        ParquetShards(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    (copy / "part-00001.parquet").unlink()
    with pytest.raises(DataError, match=r"cannot read Parquet shard .*part-00001\.parquet"):
        ParquetShards(copy)
    with pytest.raises(DataError, match=r"nowhere[/\\]train \(from data\.root\)"):
        build_source(DataConfig(source="parquet", root=str(tmp_path / "nowhere")), "train")


@pytest.fixture
def corrupt_shards(tmp_path: Path) -> Path:
    """One shard of 6 rows (one row group) whose row 2 holds undecodable bytes."""
    write_shards(
        SyntheticShapes(6, 16, 1, 2, 0, 0), tmp_path, rows_per_shard=6, row_group_size=6, seed=0, image_format="jpeg"
    )
    path = tmp_path / "part-00000.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[2] = b"garbage"
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), path)
    return tmp_path


def test_corrupt_row_raises_naming_shard_and_row(corrupt_shards: Path) -> None:
    shards = ParquetShards(corrupt_shards)
    shards.shuffle = False
    with pytest.raises(DataError, match=r"part-00000\.parquet row 2"):
        list(shards)


def test_corrupt_row_skipped_and_counted(corrupt_shards: Path, caplog: pytest.LogCaptureFixture) -> None:
    shards = ParquetShards(corrupt_shards, skip_corrupt=True)
    shards.shuffle = False
    with caplog.at_level(logging.WARNING, logger="pipeline.data.source"):
        samples = list(shards)
    indices = pq.read_table(corrupt_shards / "part-00000.parquet").column("index").to_pylist()
    assert [index for _, _, index in samples] == [
        indices[0],
        indices[1],
        indices[3],
        indices[3],
        indices[4],
        indices[5],
    ]
    assert shards.skipped == 1 and "part-00000.parquet row 2" in caplog.text


def test_convert_cli_writes_both_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = [
        "--set",
        "data.synthetic.num_train=30",
        "--set",
        "data.synthetic.num_test=12",
        "--set",
        "data.image_size=16",
    ]
    convert.main([*sizes, "--set", "data.long_tail_ratio=10", "--out", str(tmp_path), "--row-group-size", "8"])
    train, test = ParquetShards(tmp_path / "train"), ParquetShards(tmp_path / "test")
    assert (len(train), len(test)) == (30, 12) and train.unit_rows.tolist() == [8, 8, 8, 6]
    output = capsys.readouterr().out
    assert "train: 30/30 rows" in output and f"test: wrote 12 rows in 1 shards to {tmp_path / 'test'}" in output


def test_convert_cli_reports_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--set", "data.source=cifar10", "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "error: data.root is required for source cifar10" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--set", "data.source=parquet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
