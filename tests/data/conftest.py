"""Fixtures writing tiny data sets in the on-disk formats the sources read."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from pipeline.data.parquet import write_shards
from pipeline.data.synthetic import SyntheticShapes


@dataclass
class ArrayData:
    """What a fixture wrote: where, and the images [N, H, W, 3], labels [N] and coarse labels it holds per split."""

    root: Path
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]


def random_images(rng: np.random.Generator, count: int, side: int) -> np.ndarray:
    """Return ``count`` random RGB images [count, side, side, 3] uint8."""
    return rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def write_pickle(path: Path, entry: dict) -> None:
    """Write a CIFAR-style pickle batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """Return images in CIFAR's row layout: [N, 3072] with all red, then green, then blue values."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


@pytest.fixture
def cifar10_data(tmp_path: Path) -> ArrayData:
    """CIFAR-10 in torchvision's layout: five train batches of 4 images and a test batch of 6."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    train_images, train_labels = random_images(rng, 20, 32), rng.integers(0, 10, 20)
    for batch in range(5):
        part = slice(4 * batch, 4 * batch + 4)
        entry = {"data": cifar_rows(train_images[part]), "labels": train_labels[part].tolist()}
        write_pickle(folder / f"data_batch_{batch + 1}", entry)
    test_images, test_labels = random_images(rng, 6, 32), rng.integers(0, 10, 6)
    write_pickle(folder / "test_batch", {"data": cifar_rows(test_images), "labels": test_labels.tolist()})
    return ArrayData(
        tmp_path, {"train": train_images, "test": test_images}, {"train": train_labels, "test": test_labels}, {}
    )


@pytest.fixture
def cifar100_data(tmp_path: Path) -> ArrayData:
    """CIFAR-100 in torchvision's layout: train (12 images) and test (5) with fine and coarse labels."""
    rng = np.random.default_rng(1)
    data = ArrayData(tmp_path, {}, {}, {})
    for split, count in (("train", 12), ("test", 5)):
        data.images[split] = random_images(rng, count, 32)
        data.labels[split] = rng.integers(0, 100, count)
        data.coarse[split] = data.labels[split] // 5
        entry = {
            "data": cifar_rows(data.images[split]),
            "fine_labels": data.labels[split].tolist(),
            "coarse_labels": data.coarse[split].tolist(),
        }
        write_pickle(tmp_path / "cifar-100-python" / split, entry)
    return data


@pytest.fixture
def stl10_data(tmp_path: Path) -> ArrayData:
    """STL-10 binaries: train (5), test (3) and unlabeled (4) 96x96 images stored column-major, labels 1..10."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    data = ArrayData(tmp_path, {}, {}, {})
    for split, count in (("train", 5), ("test", 3), ("unlabeled", 4)):
        images = random_images(rng, count, 96)
        data.images[split] = images
        # Column-major per channel: [N, 3, W, H].
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            data.labels[split] = rng.integers(0, 10, count)
            (data.labels[split] + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return data


def save_image(path: Path, pixels: np.ndarray, image_format: str | None = None) -> None:
    """Write an RGB image file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(pixels).save(path, format=image_format)


@pytest.fixture
def image_folder_root(tmp_path: Path) -> Path:
    """root/train/<class>/... (Tiny-ImageNet nesting, mixed-case extensions, a non-image) and root/val/<class>/."""
    rng = np.random.default_rng(3)
    train = tmp_path / "train"
    save_image(train / "cat" / "a.png", random_images(rng, 1, 16)[0])
    save_image(train / "cat" / "b.JPG", random_images(rng, 1, 16)[0], "JPEG")
    save_image(train / "ant" / "images" / "ant_0.JPEG", random_images(rng, 1, 16)[0], "JPEG")
    save_image(train / "ant" / "images" / "ant_1.bmp", random_images(rng, 1, 16)[0])
    save_image(train / "ant" / "images" / "deep" / "ant_2.webp", random_images(rng, 1, 16)[0], "WEBP")
    (train / "ant" / "ant_boxes.txt").write_text("not an image\n")
    save_image(train / "dog" / "c.jpeg", random_images(rng, 1, 16)[0], "JPEG")
    save_image(tmp_path / "val" / "dog" / "v.png", random_images(rng, 1, 16)[0])
    save_image(tmp_path / "val" / "ant" / "w.png", random_images(rng, 1, 16)[0])
    return tmp_path


@pytest.fixture
def list_file_root(tmp_path: Path) -> Path:
    """root/images/*.png plus train.txt (with blank lines) and test.txt in ImageNet-LT style."""
    rng = np.random.default_rng(4)
    for name in ("x0", "x1", "x2", "y0"):
        save_image(tmp_path / "images" / f"{name}.png", random_images(rng, 1, 12)[0])
    (tmp_path / "train.txt").write_text("images/x0.png 2\n\nimages/x1.png 0\nimages/x2.png 1\n  \n")
    (tmp_path / "test.txt").write_text("images/y0.png 1\n")
    return tmp_path


@pytest.fixture
def corrupt_folder(tmp_path: Path) -> Path:
    """An image folder of three images whose middle one (class 'b') is not a decodable image."""
    rng = np.random.default_rng(5)
    save_image(tmp_path / "a" / "0.png", random_images(rng, 1, 8)[0])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "1.jpg").write_bytes(b"definitely not a jpeg")
    save_image(tmp_path / "c" / "2.png", random_images(rng, 1, 8)[0])
    return tmp_path


@pytest.fixture(scope="session")
def synthetic_source() -> SyntheticShapes:
    """A small synthetic source (60 images, 2 x 3 classes, 16 px)."""
    return SyntheticShapes(60, 16, 2, 3, seed=7, split_offset=0)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_source: SyntheticShapes) -> Path:
    """Parquet shards of ``synthetic_source``: shards of 25 rows in row groups of 10 (7 unequal units)."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(synthetic_source, out, rows_per_shard=25, row_group_size=10, seed=3, image_format="png")
    return out
