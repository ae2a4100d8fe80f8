"""The procedural shapes source: determinism, hierarchy, label balance and long tail."""

from __future__ import annotations

import colorsys
import pickle

import numpy as np
import pytest

from pipeline.config import DataConfig, SyntheticConfig
from pipeline.data import synthetic
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.longtail import long_tail_counts
from pipeline.data.synthetic import TEXTURES, SyntheticShapes, class_outlines, texture_map


def pixels(source: SyntheticShapes, index: int) -> np.ndarray:
    """Return the rendered pixels of one sample."""
    return np.asarray(source.load_image(index))


def test_same_seed_same_pixels_and_different_index_different_image() -> None:
    first, second = SyntheticShapes(40, 32, 2, 3, 5, 0), SyntheticShapes(40, 32, 2, 3, 5, 0)
    np.testing.assert_array_equal(first.labels, second.labels)
    for index in (0, 17, 39):
        np.testing.assert_array_equal(pixels(first, index), pixels(second, index))
    renders = np.stack([pixels(first, index) for index in range(len(first))])
    distinct = {render.tobytes() for render in renders}
    assert len(distinct) == len(first)
    assert renders.std(axis=0).mean() > 20


def test_seed_and_split_offset_change_images_but_split_keeps_classes() -> None:
    base = SyntheticShapes(30, 32, 2, 3, 5, 0)
    other_seed = SyntheticShapes(30, 32, 2, 3, 6, 0)
    test_split = SyntheticShapes(30, 32, 2, 3, 5, 1)
    assert not np.array_equal(pixels(base, 0), pixels(other_seed, 0))
    assert not np.array_equal(pixels(base, 0), pixels(test_split, 0))
    np.testing.assert_array_equal(base.outlines, test_split.outlines)
    assert not np.allclose(base.outlines, other_seed.outlines)


def test_item_applies_transform_and_returns_label_and_index() -> None:
    source = SyntheticShapes(12, 24, 2, 2, 0, 0, transform=lambda image: image.size)
    size, label, index = source[7]
    assert size == (24, 24) and label == source.labels[7] and index == 7
    source.transform = None
    image, _, _ = source[7]
    assert image.mode == "RGB"


def test_hierarchy_is_exposed_and_families_are_tighter_than_across() -> None:
    source = SyntheticShapes(50, 32, 3, 4, 1, 0)
    np.testing.assert_array_equal(source.superclass_of_class, np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(source.coarse_labels, source.superclass_of_class[source.labels])
    assert source.num_classes == 12
    outlines = class_outlines(1, 3, 4)
    distance = np.linalg.norm(outlines[:, None] - outlines[None], axis=-1)
    family = source.superclass_of_class
    same = (family[:, None] == family[None]) & ~np.eye(12, dtype=bool)
    different = family[:, None] != family[None]
    assert distance[same].mean() < distance[different].mean()
    assert distance[same].min() > 0


def test_labels_balanced_and_shuffled() -> None:
    source = SyntheticShapes(103, 16, 2, 5, 0, 0)
    counts = source.class_counts()
    assert counts.sum() == 103 and set(counts.tolist()) == {10, 11}
    assert not np.array_equal(source.labels, np.sort(source.labels))


def test_long_tail_counts_from_head_size() -> None:
    source = SyntheticShapes(1000, 16, 2, 5, 0, 0, long_tail_ratio=10.0)
    expected = long_tail_counts(np.full(10, 100), 10.0)
    np.testing.assert_array_equal(source.class_counts(), expected)
    assert len(source) == expected.sum() and expected[0] == 100 and expected[-1] == 10
    assert "long-tail ratio 10" in source.describe()


def test_build_uses_config_and_long_tails_train_only() -> None:
    data_cfg = DataConfig(
        image_size=16, long_tail_ratio=4.0, seed=3, synthetic=SyntheticConfig(num_train=80, num_test=20)
    )
    train, test = build_source(data_cfg, "train"), build_source(data_cfg, "test")
    np.testing.assert_array_equal(train.class_counts(), long_tail_counts(np.full(20, 4), 4.0))
    assert len(test) == 20 and test.split_offset != train.split_offset and train.seed == 3


def test_invalid_arguments_raise() -> None:
    with pytest.raises(DataError, match="num_samples"):
        SyntheticShapes(0, 32, 2, 2, 0, 0)
    with pytest.raises(DataError, match="smaller than its 20 classes"):
        SyntheticShapes(10, 32, 4, 5, 0, 0, long_tail_ratio=10.0)


def test_texture_maps_have_their_orientation_and_unknown_names_raise() -> None:
    y, x = np.meshgrid(np.linspace(0.0, 3.0, 61), np.linspace(0.0, 3.0, 61), indexing="ij")
    horizontal = texture_map("horizontal_stripes", x + 0.01, y + 0.01)
    vertical = texture_map("vertical_stripes", x + 0.01, y + 0.01)
    assert (horizontal == horizontal[:, :1]).all() and horizontal[:, 0].std() > 0.4
    assert (vertical == vertical[:1, :]).all() and vertical[0, :].std() > 0.4
    np.testing.assert_array_equal(texture_map("solid", x, y), np.ones_like(x))
    checker = texture_map("checker", x + 0.01, y + 0.01)
    assert 0.4 < checker.mean() < 0.6 and 0.05 < texture_map("dots", x, y).mean() < 0.3
    assert set(TEXTURES) == {"solid", "horizontal_stripes", "vertical_stripes", "checker", "dots"}
    with pytest.raises(ValueError, match="unknown texture 'zigzag'"):
        texture_map("zigzag", x, y)


def test_shape_colour_carries_the_family_hue_and_members_cycle_textures() -> None:
    source = SyntheticShapes(60, 32, 3, 6, 2, 0)
    np.testing.assert_array_equal(source.member_of_class, np.tile(np.arange(6), 3))
    for index in range(len(source)):
        image = pixels(source, index).reshape(-1, 3) / 255.0
        brightest = image[image.sum(axis=1).argmax()]
        hue = colorsys.rgb_to_hsv(*brightest)[0]
        family_hue = source.superclass_of_class[source.labels[index]] / 3
        distance = abs((hue - family_hue + 0.5) % 1.0 - 0.5)
        assert distance < 0.06, (index, hue, family_hue)


def test_a_rendering_is_kept_after_its_first_read_and_left_out_of_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    source = SyntheticShapes(20, 32, 2, 3, 5, 0)
    drawn: list[int] = []
    render = source.render
    monkeypatch.setattr(source, "render", lambda index: drawn.append(index) or render(index))
    first = [pixels(source, index) for index in (3, 7, 3, 7)]
    assert drawn == [3, 7]
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[0], np.asarray(render(3)))
    monkeypatch.delattr(source, "render")
    copy = pickle.loads(pickle.dumps(source))
    assert copy._renderings is None and not copy._rendered.any()
    np.testing.assert_array_equal(pixels(copy, 7), first[1])


def test_a_split_too_large_to_keep_renders_on_every_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "RENDER_CACHE_BYTES", 20 * 32 * 32 * 3 - 1)
    source = SyntheticShapes(20, 32, 2, 3, 5, 0)
    drawn: list[int] = []
    render = source.render
    monkeypatch.setattr(source, "render", lambda index: drawn.append(index) or render(index))
    np.testing.assert_array_equal(pixels(source, 4), pixels(source, 4))
    assert drawn == [4, 4] and source._renderings is None
