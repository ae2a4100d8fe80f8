"""Sources read from files on disk: CIFAR-10/100, STL-10, image folders and list files.

Each derives from :class:`pipeline.data.source.MapSource`, which applies the transform and the corrupt-image
policy.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image

from pipeline.data.errors import DataError
from pipeline.data.source import ImageFormat, MapSource, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _read_bytes(path: str) -> bytes:
    """Return the contents of an image file, or raise DataError naming it."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from exc


def _missing(what: str, path: Path, download_hint: bool) -> DataError:
    """Return the error for a data set absent from disk, telling how to fetch it."""
    hint = "; set data.download: true to fetch it" if download_hint else ""
    return DataError(f"{what} not found: expected {path}{hint}")


class CIFAR(MapSource):
    """CIFAR-10 or CIFAR-100 read from torchvision's on-disk pickle batches (no checksum checks)."""

    LAYOUT = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
    }

    def __init__(
        self,
        root: str | os.PathLike,
        name: Literal["cifar10", "cifar100"],
        train: bool,
        download: bool = False,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
    ) -> None:
        if name not in self.LAYOUT:
            raise DataError(f"CIFAR name must be 'cifar10' or 'cifar100', got {name!r}")
        folder, train_files, test_files, label_key, num_classes = self.LAYOUT[name]
        self.name, self.train, self.folder = name, train, Path(root) / folder
        paths = [self.folder / file for file in (train_files if train else test_files)]
        if download and not all(path.is_file() for path in paths):
            self._download(Path(root), name)
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise _missing(name, missing[0], download_hint=True)
        batches = [self._read_batch(path, label_key, num_classes) for path in paths]
        self.images = np.concatenate([batch[0] for batch in batches])
        coarse = [batch[2] for batch in batches]
        super().__init__(
            labels=np.concatenate([batch[1] for batch in batches]),
            num_classes=num_classes,
            transform=transform,
            coarse_labels=np.concatenate(coarse) if name == "cifar100" else None,
        )

    @staticmethod
    def _download(root: Path, name: str) -> None:
        """Fetch the data set with torchvision (which verifies its checksums)."""
        from torchvision import datasets

        fetch = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        for train in (True, False):
            fetch(str(root), train=train, download=True)

    @staticmethod
    def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (images [n, 32, 32, 3] uint8, labels [n], coarse labels [n] or empty) of one pickle batch."""
        try:
            with open(path, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataError(f"cannot read CIFAR batch {path}: {exc}") from exc
        if not isinstance(entry, dict):
            raise DataError(f"CIFAR batch {path} holds a {type(entry).__name__}, expected a dict")
        entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
        for key in ("data", label_key):
            if key not in entry:
                raise DataError(f"CIFAR batch {path} has no '{key}' entry (keys: {sorted(entry)})")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.size:
            raise DataError(f"CIFAR batch {path}: data shape {data.shape} does not match {labels.size} 32x32 images")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"CIFAR batch {path}: labels outside [0, {num_classes})")
        coarse = np.asarray(entry.get("coarse_labels", []), dtype=np.int64)
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels, coarse

    def load_image(self, index: int) -> PIL.Image.Image:
        """Return image ``index`` as a PIL RGB image."""
        return PIL.Image.fromarray(self.images[index])

    def locate(self, index: int) -> str:
        """Return the batch folder and sample number."""
        return f"{self.folder} sample {index}"

    def describe(self) -> str:
        """Return e.g. 'cifar10 train: 50000 images, 10 classes at /data/cifar-10-batches-py'."""
        split = "train" if self.train else "test"
        return f"{self.name} {split}: {len(self)} images, {self.num_classes} classes at {self.folder}"


class STL10(MapSource):
    """STL-10 read from its binary files (memory-mapped, column-major 96x96 images)."""

    FOLDER = "stl10_binary"
    SIDE = 96
    PARTS = {
        "train": ["train"],
        "test": ["test"],
        "unlabeled": ["unlabeled"],
        "train+unlabeled": ["train", "unlabeled"],
    }

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "test", "unlabeled", "train+unlabeled"],
        download: bool = False,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
    ) -> None:
        if split not in self.PARTS:
            raise DataError(f"STL-10 split must be one of {', '.join(self.PARTS)}, got {split!r}")
        self.split, self.folder = split, Path(root) / self.FOLDER
        parts = self.PARTS[split]
        image_paths = [self.folder / f"{part}_X.bin" for part in parts]
        label_paths = [self.folder / f"{part}_y.bin" for part in parts if part != "unlabeled"]
        if download and not all(path.is_file() for path in image_paths + label_paths):
            from torchvision import datasets

            datasets.STL10(str(root), split=split, download=True)
        missing = [path for path in image_paths + label_paths if not path.is_file()]
        if missing:
            raise _missing("stl10", missing[0], download_hint=True)
        image_bytes = 3 * self.SIDE * self.SIDE
        sizes = [path.stat().st_size for path in image_paths]
        for path, size in zip(image_paths, sizes, strict=True):
            if size % image_bytes:
                raise DataError(f"STL-10 image file {path} has {size} bytes, not a multiple of {image_bytes}")
        counts = [size // image_bytes for size in sizes]
        labels = [
            np.full(count, -1, dtype=np.int64)
            if part == "unlabeled"
            else self._read_labels(self.folder / f"{part}_y.bin", count)
            for part, count in zip(parts, counts, strict=True)
        ]
        self.image_paths = image_paths
        self.part_starts = np.cumsum([0, *counts])
        self._maps: list[np.memmap] | None = None
        super().__init__(labels=np.concatenate(labels), num_classes=10, transform=transform)

    @staticmethod
    def _read_labels(path: Path, count: int) -> np.ndarray:
        """Return 0-based labels from a ``*_y.bin`` file (stored 1..10), checking the count."""
        labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
        if labels.size != count:
            raise DataError(f"STL-10 label file {path} has {labels.size} labels for {count} images")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"STL-10 label file {path} holds labels outside 1..10")
        return labels

    def __getstate__(self) -> dict[str, Any]:
        """Return the picklable state: memory maps are reopened in each loader worker, not copied."""
        return {**self.__dict__, "_maps": None}

    def load_image(self, index: int) -> PIL.Image.Image:
        """Return image ``index`` as a PIL RGB image (rows and columns transposed from column-major)."""
        if self._maps is None:
            shape = (-1, 3, self.SIDE, self.SIDE)
            self._maps = [np.memmap(path, dtype=np.uint8, mode="r").reshape(shape) for path in self.image_paths]
        part = int(np.searchsorted(self.part_starts, index, side="right")) - 1
        pixels = self._maps[part][index - self.part_starts[part]]  # [3, W, H]
        return PIL.Image.fromarray(np.ascontiguousarray(pixels.transpose(2, 1, 0)))

    def locate(self, index: int) -> str:
        """Return the binary file and sample number within it."""
        part = int(np.searchsorted(self.part_starts, index, side="right")) - 1
        return f"{self.image_paths[part]} sample {index - self.part_starts[part]}"

    def describe(self) -> str:
        """Return e.g. 'stl10 train: 5000 images, 10 classes at /data/stl10_binary'."""
        return f"stl10 {self.split}: {len(self)} images, {self.num_classes} classes at {self.folder}"


class FileSource(MapSource):
    """A source of image files named by paths relative to a root (stored compactly as bytes)."""

    def __init__(
        self,
        root: str | os.PathLike,
        relative_paths: Sequence[str],
        labels: np.ndarray,
        num_classes: int,
        transform: Callable[[PIL.Image.Image], Any] | None,
        skip_corrupt: bool,
    ) -> None:
        self.root = str(root)
        # One fixed-width bytes array instead of a million str objects: small, and shared copy-on-write by workers.
        self.paths = np.array([os.fsencode(path) for path in relative_paths], dtype=np.bytes_)
        super().__init__(labels=labels, num_classes=num_classes, transform=transform, skip_corrupt=skip_corrupt)

    def path(self, index: int) -> str:
        """Return the full path of sample ``index``."""
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def load_image(self, index: int) -> PIL.Image.Image:
        """Return the decoded RGB image of sample ``index``."""
        return decode_image(self.path(index))

    def locate(self, index: int) -> str:
        """Return the image file's path."""
        return self.path(index)

    def encoded_image(self, index: int, image_format: ImageFormat) -> bytes:
        """Return the file's own bytes: copied as stored, never re-encoded."""
        return _read_bytes(self.path(index))


def _scan_images(folder: str) -> list[str]:
    """Return the image files under ``folder`` (recursively), as sorted paths relative to it."""
    found: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(folder, relative)) as entries:
            for entry in entries:
                name = os.path.join(relative, entry.name)
                if entry.is_dir():
                    pending.append(name)
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(name)
    found.sort()
    return found


def list_classes(root: str | os.PathLike) -> list[str]:
    """Return the sorted class names of an image folder: its immediate, non-hidden subdirectories."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


class ImageFolder(FileSource):
    """Images in ``root/<class>/**`` (any depth, e.g. Tiny-ImageNet's ``images/``), classes in sorted order."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        present = list_classes(root)
        self.classes = list(classes) if classes is not None else present
        unknown = sorted(set(present) - set(self.classes))
        if unknown:
            raise DataError(f"image folder {root} has class folders {unknown[:5]} not among the training classes")
        if not self.classes:
            raise DataError(f"image folder {root} has no class subdirectories")
        paths: list[str] = []
        counts = []
        for name in self.classes:
            folder = os.path.join(root, name)
            files = _scan_images(folder) if os.path.isdir(folder) else []
            paths.extend(os.path.join(name, file) for file in files)
            counts.append(len(files))
        if not paths:
            raise DataError(f"image folder {root} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}")
        labels = np.repeat(np.arange(len(self.classes)), counts)
        super().__init__(root, paths, labels, len(self.classes), transform, skip_corrupt)

    def describe(self) -> str:
        """Return e.g. 'image folder: 100000 images, 200 classes at /data/tiny-imagenet-200/train'."""
        return f"image folder: {len(self)} images, {self.num_classes} classes at {self.root}"


def read_list_file(list_path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Return (relative paths, labels) from lines ``relative/path label``; blank lines are skipped."""
    try:
        text = Path(list_path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read list file {list_path}: {exc.strerror or exc}") from exc
    paths, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not fields[1].isdigit():
            raise DataError(f"{list_path}:{number}: expected 'relative/path label' (label >= 0), got {line!r}")
        paths.append(fields[0].strip())
        labels.append(int(fields[1]))
    if not paths:
        raise DataError(f"list file {list_path} lists no images")
    return paths, np.asarray(labels, dtype=np.int64)


class ListFile(FileSource):
    """Images named by a list file of ``relative/path label`` lines (ImageNet-LT style), relative to ``root``."""

    def __init__(
        self,
        root: str | os.PathLike,
        list_path: str | os.PathLike,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if not os.path.isdir(root):
            raise DataError(f"image root not found: {root} (for list file {list_path})")
        self.list_path = str(list_path)
        paths, labels = read_list_file(list_path)
        # Checked when the data set is opened (in the driver, before any run starts), not mid-epoch.
        missing = [path for path in paths if not os.path.isfile(os.path.join(root, path))]
        if missing and not skip_corrupt:
            raise DataError(
                f"list file {list_path} names {len(missing)} image(s) missing under {root}, first "
                f"{os.path.join(root, missing[0])} (fix the list, or set data.skip_corrupt: true to skip them)"
            )
        super().__init__(root, paths, labels, int(labels.max()) + 1, transform, skip_corrupt)

    def describe(self) -> str:
        """Return e.g. 'list file /data/ImageNet_LT_train.txt: 115846 images, 1000 classes under /data/imagenet'."""
        return f"list file {self.list_path}: {len(self)} images, {self.num_classes} classes under {self.root}"
