"""The contract every data source follows, and the machinery shared by all of them.

A source is a dataset (map-style, or iterable for Parquet shards) whose items are ``(image, label, index)``
triples: the image after the source's ``transform`` (the untransformed PIL RGB image when ``transform`` is
None), its integer label (-1 for unlabelled samples) and the index of the sample actually read. Every source
also exposes

- ``labels``: int64 labels [N], -1 for unlabelled samples;
- ``num_classes``: the number of classes C;
- ``class_counts()``: the number of labelled samples per class [C];
- ``coarse_labels``: int64 superclass labels [N], or None where the data set has no class hierarchy;
- ``transform``: the callable applied to each decoded image, or None;
- ``describe()``: a one-line description (name, split, size, classes and location).

Images that cannot be decoded follow one corrupt-image policy (:class:`CorruptImagePolicy`): raise a
DataError naming the image, or, with ``skip_corrupt``, log it, count it and read the next readable sample.
Map-style sources derive from :class:`MapSource`, which applies the transform and the policy in one place;
the Parquet reader uses the same policy.
"""

from __future__ import annotations

import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import PIL.Image
from torch.utils.data import Dataset

from pipeline.data.errors import DataError

logger = logging.getLogger(__name__)

# What PIL raises for unreadable, truncated or hostile files (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)
ImageFormat = Literal["png", "jpeg"]
T = TypeVar("T")


def decode_image(file: str | os.PathLike | io.BytesIO) -> PIL.Image.Image:
    """Return the fully decoded RGB image stored in a file path or an in-memory buffer."""
    with PIL.Image.open(file) as image:
        return image.convert("RGB")


def encode_image(image: PIL.Image.Image, image_format: ImageFormat) -> bytes:
    """Return ``image`` encoded as PNG (lossless) or JPEG at quality 95."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        raise DataError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


def count_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the number of samples per class [C], ignoring unlabelled (-1) samples."""
    return np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.int64)


class CorruptImagePolicy:
    """Loads a sample, raising DataError on an unreadable image or skipping to the next readable one."""

    def __init__(self, skip_corrupt: bool) -> None:
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def first_readable(
        self, position: int, count: int, load: Callable[[int], T], locate: Callable[[int], str]
    ) -> tuple[T, int]:
        """Return ``(load(p), p)`` for the first readable p of position, position+1, ... (mod count)."""
        for offset in range(count):
            candidate = (position + offset) % count
            try:
                return load(candidate), candidate
            except DataError:
                raise
            except DECODE_ERRORS as exc:
                where = locate(candidate)
                if not self.skip_corrupt:
                    raise DataError(
                        f"cannot decode image {where}: {exc} (set data.skip_corrupt: true to skip unreadable images)"
                    ) from exc
                self.skipped += 1
                logger.warning("skipping unreadable image %s (%s); %d skipped so far", where, exc, self.skipped)
        raise DataError(f"no readable image among the {count} samples from {locate(position)} on")


class MapSource(Dataset, ABC):
    """A map-style source yielding ``(image, label, index)``; subclasses say how to load and locate images."""

    def __init__(
        self,
        labels: np.ndarray,
        num_classes: int,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        coarse_labels: np.ndarray | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.coarse_labels = None if coarse_labels is None else np.asarray(coarse_labels, dtype=np.int64)
        self.policy = CorruptImagePolicy(skip_corrupt)

    @property
    def skip_corrupt(self) -> bool:
        """Return whether unreadable images are replaced by the next readable one."""
        return self.policy.skip_corrupt

    @property
    def skipped(self) -> int:
        """Return how many unreadable images this process has skipped."""
        return self.policy.skipped

    @abstractmethod
    def load_image(self, index: int) -> PIL.Image.Image:
        """Return the untransformed RGB image of sample ``index`` (PIL errors propagate)."""

    @abstractmethod
    def locate(self, index: int) -> str:
        """Return where sample ``index`` is stored, for error messages."""

    @abstractmethod
    def describe(self) -> str:
        """Return a one-line description: name, split, size, classes and location."""

    def encoded_image(self, index: int, image_format: ImageFormat) -> bytes:
        """Return sample ``index`` as encoded image bytes, for writing Parquet shards."""
        return encode_image(self.load_image(index), image_format)

    def class_counts(self) -> np.ndarray:
        """Return the number of labelled samples per class [C]."""
        return count_classes(self.labels, self.num_classes)

    def __len__(self) -> int:
        """Return the number of samples."""
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        """Return ``(transformed image, label, index)``, the index being that of the sample actually read."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        image, position = self.policy.first_readable(int(index), len(self), self.load_image, self.locate)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[position]), position
