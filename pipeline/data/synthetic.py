"""Procedural textured shapes with a two-level class hierarchy, rendered from (seed, split, index) on first read.

A superclass is a family: a base radial outline ``r(theta)`` with a strong primary lobe count (2 to 6,
cycling) plus a weaker random low harmonic, drawn in the family's hue (families spread round the colour
wheel). Its classes are members of the family: the base outline plus finer lobes (one higher harmonic per
member) filled with the member's texture (solid, horizontal stripes, vertical stripes, checker, dots,
cycling), so members of a family look alike and families differ at a glance. The member's texture also
covers the grey background at low contrast, so every crop a view takes still carries a class cue.

Each image draws its nuisances: the shape's position anywhere in the frame and its size, a horizontal
flip, the texture's phase and scale, and the brightness, saturation and contrast of its colours (hue only
within a band narrower than colour jitter's). These are the variations contrastive views teach invariance
to (crops, flips, colour jitter), so raw pixels are a poor representation and learned invariances pay off.
Nothing else is left that would tell two images of one class apart through augmentation: an instance cue
that survives the views (a free hue, a gradient direction, a noise pattern) becomes the feature contrastive
learning keeps, and the kNN monitor then matches images by it instead of by class.
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
FAMILY_LOBES = np.arange(2, 7)
MEMBER_HARMONICS = np.arange(6, 11)
TEXTURES = ("solid", "horizontal_stripes", "vertical_stripes", "checker", "dots")
# Texture period as a fraction of the frame, scaled per image by a log-uniform factor inside the zoom range of
# the views' random resized crops.
TEXTURE_PERIOD = 1.0 / 7.0
TEXTURE_SCALE = (0.75, 1.33)
# Brightness of a texture's "off" cells relative to its "on" cells, in the shape and in the background.
SHAPE_TEXTURE_FLOOR, BACKGROUND_TEXTURE_FLOOR = 0.5, 0.6
# Hue varies within a family by less than colour jitter's +-0.1: a wider per-image spread would survive the
# views and become an instance cue.
HUE_SPREAD = 0.04
# Shape centre (fraction of the frame, per axis) and outline radius (fraction of the frame).
CENTRE_RANGE = (0.2, 0.8)
RADIUS_RANGE = (0.2, 0.35)
# Independent random streams, so that a sample's image depends only on (seed, split_offset, index), never on N.
STREAM_FAMILY, STREAM_MEMBER, STREAM_LABELS, STREAM_GEOMETRY, STREAM_COLOURS = range(5)
# Per-image geometry draws: centre x, y; radius; flip; texture phase x, y; texture scale.
GEOMETRY_FIELDS = 7
# Per-image colour draws: hue offset, saturation, background brightness, shape contrast.
COLOUR_FIELDS = 4
# A split whose images fit in this many bytes keeps each rendering (about 0.3 ms of Python a 32 px image) for
# later reads: every epoch and every kNN pass re-reads the split. Larger splits render on every read.
RENDER_CACHE_BYTES = 1 << 30


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
    """Procedural textured shapes in ``num_superclasses`` families of ``classes_per_superclass`` classes each.

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
        self.member_of_class = np.arange(num_classes) % classes_per_superclass
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
        canvas = image_size * SUPERSAMPLE
        grid = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas - 0.5
        self.grid_x, self.grid_y = np.meshgrid(grid, grid)
        self.theta = np.linspace(0.0, 2.0 * np.pi, VERTICES, endpoint=False)
        self._renderings: np.ndarray | None = None
        self._rendered = np.zeros(count, dtype=bool)
        super().__init__(
            labels=labels,
            num_classes=num_classes,
            transform=transform,
            coarse_labels=self.superclass_of_class[labels],
        )

    def load_image(self, index: int) -> PIL.Image.Image:
        """Return the rendered RGB image of sample ``index``, kept after its first rendering if the split fits."""
        if self._rendered.size * self.image_size**2 * 3 > RENDER_CACHE_BYTES:
            return self.render(index)
        if self._renderings is None:
            # Untouched pages cost no memory: a process that reads part of the split holds only that part.
            self._renderings = np.zeros((self._rendered.size, self.image_size, self.image_size, 3), dtype=np.uint8)
        if not self._rendered[index]:
            self._renderings[index] = np.asarray(self.render(index))
            self._rendered[index] = True
        return PIL.Image.fromarray(self._renderings[index])

    def __getstate__(self) -> dict[str, Any]:
        """Return the source's state without its renderings, so that a pickled copy stays small."""
        state = dict(self.__dict__)
        state["_renderings"], state["_rendered"] = None, np.zeros_like(self._rendered)
        return state

    def render(self, index: int) -> PIL.Image.Image:
        """Return the RGB image of sample ``index``, drawn from its class and nuisance draws."""
        canvas = self.image_size * SUPERSAMPLE
        cx, cy, radius, flip, phase_x, phase_y, scale = self.geometry[index]
        label = self.labels[index]
        family_hue = self.superclass_of_class[label] / self.num_superclasses
        background_rgb, shape_rgb = _colours(self.colours[index], family_hue)
        outline = self.outlines[label] * _between(RADIUS_RANGE, radius) * canvas
        centre = _between(CENTRE_RANGE, np.array([cx, cy])) * canvas
        x = np.cos(self.theta) * outline * (1.0 if flip < 0.5 else -1.0)
        points = np.stack([x, np.sin(self.theta) * outline], axis=1) + centre
        mask = PIL.Image.new("L", (canvas, canvas), 0)
        PIL.ImageDraw.Draw(mask).polygon(points.ravel().tolist(), fill=255)
        inside = np.asarray(mask, dtype=np.float32)[..., None] / 255.0  # [canvas, canvas, 1]
        period = TEXTURE_PERIOD * TEXTURE_SCALE[0] * (TEXTURE_SCALE[1] / TEXTURE_SCALE[0]) ** scale
        texture = TEXTURES[self.member_of_class[label] % len(TEXTURES)]
        on = texture_map(texture, self.grid_x / period + phase_x, self.grid_y / period + phase_y)[..., None]
        shape = shape_rgb * (SHAPE_TEXTURE_FLOOR + (1.0 - SHAPE_TEXTURE_FLOOR) * on)
        background = background_rgb * (BACKGROUND_TEXTURE_FLOOR + (1.0 - BACKGROUND_TEXTURE_FLOOR) * on)
        pixels = background * (1.0 - inside) + shape * inside
        image = PIL.Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        return image.resize((self.image_size, self.image_size), PIL.Image.Resampling.BOX)

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


def texture_map(texture: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the 0/1 "on" map of a texture at coordinates measured in texture periods (same shape as x)."""
    wave_x, wave_y = np.sin(2.0 * np.pi * x), np.sin(2.0 * np.pi * y)
    if texture == "solid":
        on = np.ones_like(x, dtype=bool)
    elif texture == "horizontal_stripes":
        on = wave_y > 0
    elif texture == "vertical_stripes":
        on = wave_x > 0
    elif texture == "checker":
        on = wave_x * wave_y > 0
    elif texture == "dots":
        on = (wave_x > 0.3) & (wave_y > 0.3)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return on.astype(np.float32)


def _between(bounds: tuple[float, float], fraction: Any) -> Any:
    """Return the point(s) ``fraction`` (uniform draws in [0, 1)) of the way from ``bounds[0]`` to ``bounds[1]``."""
    return bounds[0] + (bounds[1] - bounds[0]) * fraction


def _colours(fields: np.ndarray, family_hue: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the grey background and the shape's RGB (0-255) from uniform draws.

    The shape is always brighter than the background: a fixed polarity, because a random one would survive
    every augmentation (even grayscale) and become an instance cue unrelated to the class.
    """
    hue = (family_hue + HUE_SPREAD * (2.0 * fields[0] - 1.0)) % 1.0
    saturation = 0.5 + 0.3 * fields[1]
    background = 0.15 + 0.2 * fields[2]
    shape = background + 0.35 + 0.2 * fields[3]
    return np.full(3, background * 255.0), np.array(colorsys.hsv_to_rgb(hue, saturation, shape)) * 255.0
