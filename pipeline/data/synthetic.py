"""Procedural shapes with a two-level class hierarchy, rendered on the fly from (seed, split, index).

A superclass is a family of shapes: a base radial outline ``r(theta)`` with a strong primary lobe count
(2 to 6, cycling) plus a weaker random low harmonic that separates families sharing a count. Its classes
are members of the family: the base outline plus finer lobes (one higher harmonic, different for each
member of a family), so members look alike and families differ at a glance. Each image
places its shape at a random position and scale, with a mild rotation, in a random colour over a random
gradient background with noise and sometimes a distractor blob. The nuisances are the ones contrastive
augmentations teach invariance to (colour, position, scale), so raw pixels are a poor representation and
learned invariances pay off; full rotations are left out because no standard view augmentation covers them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from pipeline.data.errors import DataError
from pipeline.data.longtail import long_tail_counts
from pipeline.data.source import MapSource

VERTICES = 64
SUPERSAMPLE = 2
NOISE_TILES = 16
FAMILY_LOBES = np.arange(2, 7)
MEMBER_HARMONICS = np.arange(6, 11)
MAX_ROTATION = np.pi / 9
# Colours vary in brightness, saturation and contrast and in hue only within a band narrower than colour
# jitter's: these are nuisances the standard views teach invariance to. Free hues would survive every
# augmentation, become the instance cue that contrastive learning keeps, and make kNN match by colour.
HUE_CENTRE, HUE_SPREAD = 0.58, 0.06
# Independent random streams, so that a sample's image depends only on (seed, split_offset, index), never on N.
STREAM_FAMILY, STREAM_MEMBER, STREAM_LABELS, STREAM_GEOMETRY, STREAM_COLOURS, STREAM_NOISE = range(6)
# Per-image parameters drawn from the geometry stream: centre x, y; radius; rotation; distractor x, y, size, presence.
GEOMETRY_FIELDS = 8
# Colour stream: hue, saturation, background brightness, gradient depth, shape and distractor brightness,
# then gradient angle, noise strength, noise tile, noise offset x, y.
COLOUR_FIELDS = 11


def class_outlines(seed: int, num_superclasses: int, classes_per_superclass: int) -> np.ndarray:
    """Return the radial outline of every class [C, VERTICES], max radius 1, class c in superclass c // per."""
    theta = np.linspace(0.0, 2.0 * np.pi, VERTICES, endpoint=False)
    outlines = []
    for family in range(num_superclasses):
        family_rng = np.random.default_rng([seed, STREAM_FAMILY, family])
        primary = FAMILY_LOBES[family % FAMILY_LOBES.size]
        secondary = family_rng.choice(np.setdiff1d(FAMILY_LOBES, [primary]))
        amplitude = (family_rng.uniform(0.3, 0.4), family_rng.uniform(0.05, 0.12))
        phase = family_rng.uniform(0.0, 2.0 * np.pi, 2)
        base = (
            1.0
            + amplitude[0] * np.cos(primary * theta + phase[0])
            + amplitude[1] * np.cos(secondary * theta + phase[1])
        )
        # Members of one family take distinct lobe counts (cycling once a family has more members than counts).
        lobes = family_rng.permutation(MEMBER_HARMONICS)
        for member in range(classes_per_superclass):
            member_rng = np.random.default_rng([seed, STREAM_MEMBER, family, member])
            lobe_amplitude = member_rng.uniform(0.14, 0.2)
            lobe_phase = member_rng.uniform(0.0, 2.0 * np.pi)
            radius = base + lobe_amplitude * np.cos(lobes[member % lobes.size] * theta + lobe_phase)
            outlines.append(radius / radius.max())
    return np.stack(outlines)


def balanced_labels(num_samples: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``num_samples`` labels with class sizes as equal as possible, in a random order."""
    return rng.permutation(np.arange(num_samples) % num_classes)


class SyntheticShapes(MapSource):
    """Procedural shape images in ``num_superclasses`` families of ``classes_per_superclass`` classes each.

    With ``long_tail_ratio`` the head class holds ``num_samples // C`` images and class ``c`` holds
    ``long_tail_counts`` of that, so the set is smaller than ``num_samples``.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int,
        num_superclasses: int,
        classes_per_superclass: int,
        seed: int,
        split_offset: int,
        long_tail_ratio: float | None = None,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
    ) -> None:
        num_classes = num_superclasses * classes_per_superclass
        if num_samples < 1 or image_size < 8 or num_classes < 1:
            raise DataError(
                f"synthetic data needs num_samples >= 1, image_size >= 8 and at least one class; got "
                f"{num_samples}, {image_size}, {num_superclasses} x {classes_per_superclass}"
            )
        self.image_size, self.seed, self.split_offset = image_size, seed, split_offset
        self.num_superclasses, self.long_tail_ratio = num_superclasses, long_tail_ratio
        self.superclass_of_class = np.arange(num_classes) // classes_per_superclass
        self.outlines = class_outlines(seed, num_superclasses, classes_per_superclass)
        label_rng = np.random.default_rng([seed, split_offset, STREAM_LABELS])
        if long_tail_ratio is None:
            labels = balanced_labels(num_samples, num_classes, label_rng)
        else:
            head = num_samples // num_classes
            if head < 1:
                raise DataError(f"synthetic num_samples = {num_samples} is smaller than its {num_classes} classes")
            counts = long_tail_counts(np.full(num_classes, head), long_tail_ratio)
            labels = label_rng.permutation(np.repeat(np.arange(num_classes), counts))
        count = labels.size
        self.geometry = np.random.default_rng([seed, split_offset, STREAM_GEOMETRY]).random((count, GEOMETRY_FIELDS))
        self.colours = np.random.default_rng([seed, split_offset, STREAM_COLOURS]).random((count, COLOUR_FIELDS))
        noise_rng = np.random.default_rng([seed, split_offset, STREAM_NOISE])
        self.noise = noise_rng.standard_normal((NOISE_TILES, image_size, image_size, 3)).astype(np.float32)
        canvas = image_size * SUPERSAMPLE
        grid = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas - 0.5
        self.grid_x, self.grid_y = np.meshgrid(grid, grid)
        self.theta = np.linspace(0.0, 2.0 * np.pi, VERTICES, endpoint=False)
        super().__init__(
            labels=labels,
            num_classes=num_classes,
            transform=transform,
            coarse_labels=self.superclass_of_class[labels],
        )

    def load_image(self, index: int) -> PIL.Image.Image:
        """Return the rendered RGB image of sample ``index``."""
        canvas = self.image_size * SUPERSAMPLE
        cx, cy, radius, rotation, blob_x, blob_y, blob_size, blob_present = self.geometry[index]
        colours = self.colours[index]
        low_rgb, high_rgb, shape_rgb, blob_rgb = _colours(colours[:6])
        angle, noise_strength, tile, shift_x, shift_y = colours[6:]
        ramp = np.cos(2 * np.pi * angle) * self.grid_x + np.sin(2 * np.pi * angle) * self.grid_y + 0.5
        background = low_rgb + ramp[..., None] * (high_rgb - low_rgb)
        image = PIL.Image.fromarray(background.clip(0, 255).astype(np.uint8))
        draw = PIL.ImageDraw.Draw(image)
        if blob_present < 0.2:
            half = (0.08 + 0.12 * blob_size) * canvas
            centre_x, centre_y = (0.15 + 0.7 * blob_x) * canvas, (0.15 + 0.7 * blob_y) * canvas
            draw.ellipse((centre_x - half, centre_y - half, centre_x + half, centre_y + half), fill=_rgb(blob_rgb))
        outline = self.outlines[self.labels[index]] * (0.3 + 0.15 * radius) * canvas
        angles = self.theta + MAX_ROTATION * (2.0 * rotation - 1.0)
        centre = (0.3 + 0.4 * np.array([cx, cy])) * canvas
        points = np.stack([np.cos(angles) * outline, np.sin(angles) * outline], axis=1) + centre
        draw.polygon(points.ravel().tolist(), fill=_rgb(shape_rgb))
        image = image.resize((self.image_size, self.image_size), PIL.Image.Resampling.BOX)
        shift = (int(shift_y * self.image_size), int(shift_x * self.image_size))
        noise = np.roll(self.noise[int(tile * NOISE_TILES)], shift, (0, 1))
        pixels = np.asarray(image, dtype=np.float32) + (8.0 + 8.0 * noise_strength) * noise
        return PIL.Image.fromarray(pixels.clip(0, 255).astype(np.uint8))

    def locate(self, index: int) -> str:
        """Return the sample's identity (it has no file)."""
        return f"synthetic sample {index} (seed {self.seed}, split offset {self.split_offset})"

    def describe(self) -> str:
        """Return e.g. 'synthetic split 0: 5000 images, 20 classes (4 superclasses), 32 px, seed 0'."""
        tail = "" if self.long_tail_ratio is None else f", long-tail ratio {self.long_tail_ratio:g}"
        return (
            f"synthetic split {self.split_offset}: {len(self)} images, {self.num_classes} classes "
            f"({self.num_superclasses} superclasses), {self.image_size} px, seed {self.seed}{tail}"
        )


def _colours(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return background low/high, shape and distractor RGB (0-255) from uniform draws.

    The shape is always 0.4-0.6 brighter than the background: a fixed polarity, because a random one would
    survive every augmentation (even grayscale) and become an instance cue unrelated to the class.
    """
    hue = HUE_CENTRE + HUE_SPREAD * (2.0 * fields[0] - 1.0)
    saturation = 0.3 + 0.4 * fields[1]
    background = 0.1 + 0.3 * fields[2]
    depth = 0.6 + 0.4 * fields[3]
    shape = background + 0.4 + 0.2 * fields[4]
    blob = background + 0.2 + 0.2 * fields[5]
    low, high, shape_rgb, blob_rgb = (
        np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255.0
        for value in (background, background * depth, shape, blob)
    )
    return low, high, shape_rgb, blob_rgb


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    """Return an RGB triple of ints for PIL drawing."""
    red, green, blue = (int(value) for value in values)
    return red, green, blue
