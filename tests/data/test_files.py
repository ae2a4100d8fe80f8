"""File-based sources on generated files: CIFAR-10/100, STL-10, image folders, list files, corrupt images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataConfig
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.files import CIFAR, STL10, ImageFolder, ListFile, read_list_file
from pipeline.data.parquet import write_shards
from tests.data.conftest import ArrayData


def pixels(image) -> np.ndarray:
    """Return a PIL image's pixels as an array."""
    return np.asarray(image)


def test_cifar10_reads_images_labels_and_indices(cifar10_data: ArrayData) -> None:
    for split in ("train", "test"):
        source = CIFAR(cifar10_data.root, "cifar10", train=split == "train")
        assert len(source) == len(cifar10_data.labels[split])
        np.testing.assert_array_equal(source.labels, cifar10_data.labels[split])
        for index in (0, len(source) - 1):
            image, label, returned = source[index]
            assert image.mode == "RGB" and image.size == (32, 32)
            np.testing.assert_array_equal(pixels(image), cifar10_data.images[split][index])
            assert (label, returned) == (cifar10_data.labels[split][index], index)
        assert source.num_classes == 10 and source.coarse_labels is None
        np.testing.assert_array_equal(source.class_counts(), np.bincount(cifar10_data.labels[split], minlength=10))
        assert source.describe().startswith(f"cifar10 {split}: {len(source)} images, 10 classes at ")


def test_cifar100_exposes_coarse_labels(cifar100_data: ArrayData) -> None:
    source = CIFAR(cifar100_data.root, "cifar100", train=True, transform=lambda image: pixels(image).sum())
    assert source.num_classes == 100
    np.testing.assert_array_equal(source.labels, cifar100_data.labels["train"])
    np.testing.assert_array_equal(source.coarse_labels, cifar100_data.coarse["train"])
    value, _, _ = source[3]
    assert value == cifar100_data.images["train"][3].sum()


def test_missing_cifar_names_expected_path_and_download_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py[/\\]data_batch_1.*data\.download: true"):
        CIFAR(tmp_path, "cifar10", train=True)
    with pytest.raises(DataError, match=r"cifar-100-python[/\\]test"):
        build_source(DataConfig(source="cifar100", root=str(tmp_path)), "test")


def test_malformed_cifar_batch_is_named(cifar10_data: ArrayData) -> None:
    broken = cifar10_data.root / "cifar-10-batches-py" / "data_batch_3"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        CIFAR(cifar10_data.root, "cifar10", train=True)


@pytest.mark.parametrize("source", ["cifar10", "stl10", "image_folder", "list_file", "parquet"])
def test_sources_needing_a_root_name_the_key(source: str) -> None:
    with pytest.raises(DataError, match=f"data.root is required for source {source}"):
        build_source(DataConfig(source=source), "train")


def test_stl10_splits_orientation_and_unlabelled(stl10_data: ArrayData) -> None:
    train = STL10(stl10_data.root, "train")
    np.testing.assert_array_equal(train.labels, stl10_data.labels["train"])
    for index in range(len(train)):
        np.testing.assert_array_equal(pixels(train.load_image(index)), stl10_data.images["train"][index])
    unlabeled = STL10(stl10_data.root, "unlabeled")
    assert np.all(unlabeled.labels == -1) and unlabeled.class_counts().sum() == 0
    both = STL10(stl10_data.root, "train+unlabeled")
    assert len(both) == 9
    image, label, index = both[6]
    np.testing.assert_array_equal(pixels(image), stl10_data.images["unlabeled"][1])
    assert (label, index) == (-1, 6)
    test = build_source(DataConfig(source="stl10", root=str(stl10_data.root)), "test")
    np.testing.assert_array_equal(test.labels, stl10_data.labels["test"])
    with_unlabeled = DataConfig(source="stl10", root=str(stl10_data.root), stl10_unlabeled=True)
    assert len(build_source(with_unlabeled, "train")) == 9


def test_stl10_missing_file_and_bad_size(stl10_data: ArrayData) -> None:
    (stl10_data.root / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(DataError, match=r"stl10_binary[/\\]test_y\.bin.*data\.download: true"):
        STL10(stl10_data.root, "test")
    (stl10_data.root / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="train_X.bin has 100 bytes"):
        STL10(stl10_data.root, "train")


def test_image_folder_classes_nesting_and_extensions(image_folder_root: Path) -> None:
    source = ImageFolder(image_folder_root / "train")
    assert source.classes == ["ant", "cat", "dog"]
    names = [source.locate(index).replace("\\", "/").split("/train/")[1] for index in range(len(source))]
    expected = ["ant/images/ant_0.JPEG", "ant/images/ant_1.bmp", "ant/images/deep/ant_2.webp", "cat/a.png"]
    assert names == [*expected, "cat/b.JPG", "dog/c.jpeg"]
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 2])
    image, label, index = source[4]
    assert image.mode == "RGB" and image.size == (16, 16) and (label, index) == (1, 4)


def test_image_folder_test_split_uses_training_classes(image_folder_root: Path) -> None:
    data_cfg = DataConfig(source="image_folder", root=str(image_folder_root))
    test = build_source(data_cfg, "test")
    assert test.num_classes == 3
    np.testing.assert_array_equal(test.labels, [0, 2])
    assert "2 images, 3 classes" in test.describe()
    with pytest.raises(DataError, match=r"nowhere.*data\.root \+ data\.test_dir"):
        build_source(data_cfg.model_copy(update={"test_dir": "nowhere"}), "test")


def test_list_file_parsing_and_errors(list_file_root: Path) -> None:
    source = ListFile(list_file_root, list_file_root / "train.txt")
    np.testing.assert_array_equal(source.labels, [2, 0, 1])
    assert source.num_classes == 3 and source.locate(1).endswith("x1.png")
    bad = list_file_root / "bad.txt"
    bad.write_text("images/x0.png 1\n\nimages/x1.png cat\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: expected 'relative/path label'"):
        read_list_file(bad)


def test_list_file_through_build_names_missing_keys(list_file_root: Path) -> None:
    data_cfg = DataConfig(source="list_file", root=str(list_file_root), train_list="train.txt")
    assert len(build_source(data_cfg, "train")) == 3
    with pytest.raises(DataError, match="data.test_list is required for source list_file"):
        build_source(data_cfg, "test")
    missing = data_cfg.model_copy(update={"test_list": "absent.txt"})
    with pytest.raises(DataError, match=r"absent\.txt \(from data\.root \+ data\.test_list\)"):
        build_source(missing, "test")


def test_corrupt_image_raises_naming_the_file(corrupt_folder: Path) -> None:
    source = ImageFolder(corrupt_folder)
    with pytest.raises(DataError, match=r"cannot decode image .*b[/\\]1\.jpg.*data\.skip_corrupt"):
        source[1]


def test_corrupt_image_skipped_to_next_readable(corrupt_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = ImageFolder(corrupt_folder, transform=np.array, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.source"):
        image, label, index = source[1]
    assert (label, index) == (2, 2) and source.skipped == 1
    np.testing.assert_array_equal(image, pixels(source.load_image(2)))
    assert "1.jpg" in caplog.text and "1 skipped so far" in caplog.text


def test_file_bytes_are_copied_into_parquet(image_folder_root: Path, tmp_path: Path) -> None:
    source = ImageFolder(image_folder_root / "train")
    write_shards(source, tmp_path / "shards", rows_per_shard=4, row_group_size=2, seed=0, image_format="png")
    table = pq.read_table(tmp_path / "shards" / "part-00000.parquet")
    for image, index in zip(table.column("image").to_pylist(), table.column("index").to_pylist(), strict=True):
        assert image == Path(source.path(index)).read_bytes()


def test_list_file_naming_a_missing_image_fails_when_opened(list_file_root: Path) -> None:
    listed = (list_file_root / "train.txt").read_text()
    (list_file_root / "gaps.txt").write_text(listed + "absent/nothing.jpg 0\n")
    with pytest.raises(DataError, match=r"names 1 image\(s\) missing .*absent/nothing\.jpg.*data\.skip_corrupt"):
        ListFile(list_file_root, list_file_root / "gaps.txt")
    listed_count = len(ListFile(list_file_root, list_file_root / "train.txt"))
    assert len(ListFile(list_file_root, list_file_root / "gaps.txt", skip_corrupt=True)) == listed_count + 1
