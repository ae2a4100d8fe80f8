"""Multi-crop: local views declared as recipes of their own side, MoCo's and HCSC's use of them, and config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from pipeline.config import ConfigError, load_config, with_overrides
from pipeline.data.batched_views import BatchedView
from pipeline.data.recipes import Patches, RandomResizedCrop, ViewRecipe
from pipeline.data.views import build_view
from pipeline.losses import (
    contrast_logits,
    icsc,
    info_nce,
    neighbour_relations,
    pcsc,
    pcsc_negative_ids,
    pcsc_selection_probs,
    soft_cross_entropy,
    soft_targets,
    supcon,
)
from pipeline.methods import Batch, Method, StepInfo
from pipeline.methods.augmentations import MOCO_V2, LocalCrop, local_views
from pipeline.methods.hcsc.method import Hcsc, Prototypes
from pipeline.runtime.launch import validate
from tests.methods.test_hcsc import BATCH, hand_made_hierarchy, replayed_icsc_masks
from tests.methods.test_hcsc import make as make_hcsc
from tests.support.methods import make_method

TWO_SMALL = [{"size": 8, "scale": [0.05, 0.4], "count": 2}, {"size": 12, "scale": [0.1, 0.6]}]


def test_local_views_take_each_groups_crop_and_side_and_keep_every_other_step() -> None:
    groups = [LocalCrop(size=8, scale=(0.05, 0.14), count=2), LocalCrop(size=12, scale=(0.1, 0.3))]
    views = local_views(MOCO_V2, groups)
    assert list(views) == ["local_0", "local_1", "local_2"]
    assert [view.size for view in views.values()] == [8, 8, 12]
    for view, scale in zip(views.values(), [(0.05, 0.14), (0.05, 0.14), (0.1, 0.3)], strict=True):
        (crop,) = [step for step in view.steps if isinstance(step, RandomResizedCrop)]
        assert crop.scale == scale and crop.ratio == MOCO_V2.steps[0].ratio
        assert [step for step in view.steps if not isinstance(step, RandomResizedCrop)] == list(MOCO_V2.steps[1:])


def test_a_view_of_its_own_side_comes_out_at_that_side_on_both_paths() -> None:
    data = load_config(None, ["data.image_size=16"]).data
    recipe = ViewRecipe(MOCO_V2.steps, size=8)
    image = Image.fromarray(torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8).numpy())
    assert build_view(recipe, data)(image).shape == (3, 8, 8)
    batch = torch.rand(4, 3, 16, 16)
    assert BatchedView(recipe, data)(batch, torch.Generator().manual_seed(0)).shape == (4, 3, 8, 8)
    assert build_view(MOCO_V2, data)(image).shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"steps": MOCO_V2.steps, "size": 0}, "view size must be a positive integer"),
        ({"steps": MOCO_V2.steps, "size": 8, "patches": Patches()}, "keeps the image size"),
        ({"steps": MOCO_V2.steps[1:], "size": 8}, "needs a resizing step"),
    ],
)
def test_a_view_size_is_checked(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewRecipe(**arguments)


@pytest.mark.parametrize(
    ("crop", "message"),
    [({"size": 4, "scale": [0.1, 0.2]}, "size"), ({"size": 8, "scale": [0.5, 0.2]}, "0 < min <= max <= 1")],
)
def test_a_local_crop_is_checked_naming_its_field(crop: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalCrop(**crop)


def test_a_method_without_local_crops_refuses_them_naming_the_key() -> None:
    config = with_overrides(load_config(None, ["method.name=dscl"]), {"method.local_crops": TWO_SMALL})
    with pytest.raises(ConfigError, match="method.local_crops: dscl does not use local crops"):
        validate(config)


def local_batch(views: dict) -> Batch:
    """Return random images for every declared view (each at its own side) of dataset images 0..7."""
    images = {name: torch.randn(8, 3, recipe.side(16), recipe.side(16)) for name, recipe in views.items()}
    return Batch(images, torch.zeros(8, dtype=torch.long), torch.arange(8))


def queue_method_with_crops(name: str) -> tuple[Method, Batch]:
    """Return a tiny queue method (plain BN, queue 16, fixed key encoder) with three local crops, and a batch."""
    overrides = {"method.queue_size": 16, "model.batch_norm": "plain", "method.momentum": 1.0}
    method = make_method(name, num_classes=5, batch_size=8, **overrides, **{"method.local_crops": TWO_SMALL})
    views = method.views(method.context.config)
    assert list(views) == ["query", "key", "local_0", "local_1", "local_2"]
    return method, local_batch(views)


def test_moco_adds_one_infonce_per_local_crop_against_the_same_key_and_queue() -> None:
    method, batch = queue_method_with_crops("moco")
    key_passes: list[int] = []
    method.momentum_encoder.register_forward_hook(lambda module, inputs, output: key_passes.append(len(inputs[0])))
    method.eval()
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        embed = lambda name: F.normalize(method.online(batch.views[name]), dim=1)  # noqa: E731
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
        queue, temperature = method.queue.embeddings, method.params.temperature
        local = [info_nce(embed(f"local_{index}"), key, queue, temperature) for index in range(3)]
        expected = info_nce(embed("query"), key, queue, temperature) + sum(local)
    assert key_passes[0] == 8 and len(key_passes) == 2  # the method's one key pass, then this test's
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["local_info_nce"], sum(local))


def hcsc_with_prototypes(**overrides: object) -> tuple[Hcsc, Batch]:
    """Return a tiny HCSC past its warm-up (hand-made 6-3-2 hierarchy) and a batch of every view it declares."""
    method = make_hcsc(**overrides)
    method.prototypes = Prototypes.from_hierarchy(hand_made_hierarchy(), torch.device("cpu"))
    views = method.views(method.context.config)
    batch = Batch(
        {name: torch.randn(BATCH, 3, recipe.side(16), recipe.side(16)) for name, recipe in views.items()},
        torch.zeros(BATCH, dtype=torch.long),
        torch.arange(BATCH) * 6 + 3,
    )
    return method, batch


def test_hcsc_adds_each_local_crops_instance_and_prototype_losses() -> None:
    method, batch = hcsc_with_prototypes(
        **{"method.instance_selection": False, "method.prototype_selection": False, "method.local_crops": TWO_SMALL}
    )
    method.eval()
    with torch.no_grad():
        losses = method(batch, StepInfo(3, 0, 10))
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
        prototypes, queue, temperature = method.prototypes, method.queue.embeddings, method.params.temperature

        def terms(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = F.normalize(method.online(batch.views[name]), dim=1)
            levels = []
            for level in range(3):
                positives = prototypes.assignments[level][batch.indices]
                negatives = pcsc_negative_ids(positives, prototypes.centroids[level].shape[0])
                centroids, concentration = prototypes.centroids[level], prototypes.concentration[level]
                levels.append(pcsc(embedding, centroids, concentration, positives, negatives))
            return icsc(embedding, key, queue, None, temperature), torch.stack(levels).mean()

        (query_instance, query_prototype), *local = [terms(name) for name in batch.views if name != "key"]
    local_instance = sum(instance for instance, _ in local)
    local_prototype = sum(prototype for _, prototype in local)
    assert len(local) == 3
    assert losses["instance_loss"] == pytest.approx(float(query_instance), rel=1e-5)
    assert losses["local_instance_loss"] == pytest.approx(float(local_instance), rel=1e-5)
    assert losses["local_prototype_loss"] == pytest.approx(float(local_prototype), rel=1e-5)
    total = query_instance + query_prototype + local_instance + local_prototype
    assert losses["loss"] == pytest.approx(float(total), rel=1e-5)


@pytest.mark.parametrize("on_local", [True, False])
def test_hcsc_local_crops_use_the_querys_selected_negatives_when_selection_on_local(on_local: bool) -> None:
    method, batch = hcsc_with_prototypes(
        **{"method.prototype_selection": False, "method.local_crops": TWO_SMALL, "method.selection_on_local": on_local}
    )
    method.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        losses = method(batch, StepInfo(3, 0, 10))
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
        prototypes, queue, temperature = method.prototypes, method.queue.embeddings, method.params.temperature
        clusters = [assignments[batch.indices] for assignments in prototypes.assignments]
        masks = replayed_icsc_masks(prototypes, queue, clusters, seed=7)  # the query's ICSC draws come first
        local_masks = masks if on_local else None
        expected = sum(
            icsc(F.normalize(method.online(batch.views[f"local_{index}"]), dim=1), key, queue, local_masks, temperature)
            for index in range(3)
        )
    assert losses["local_instance_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("name", ["supcon", "simclr"])
def test_supcon_and_simclr_contrast_every_local_crop_as_one_more_view(name: str) -> None:
    method = make_method(
        name, num_classes=5, batch_size=8, **{"model.batch_norm": "plain", "method.local_crops": TWO_SMALL}
    )
    views = method.views(method.context.config)
    assert list(views) == ["view1", "view2", "local_0", "local_1", "local_2"]
    batch = local_batch(views)
    batch.labels = torch.arange(8) % 3
    method.eval()
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        pair = F.normalize(method.encoder(torch.cat([batch.views["view1"], batch.views["view2"]])), dim=1)
        local = [F.normalize(method.encoder(batch.views[f"local_{index}"]), dim=1) for index in range(3)]
        features = torch.stack([pair[:8], pair[8:], *local], dim=1)
        labels = batch.labels if name == "supcon" else None
        expected = supcon(features, labels, method.params.temperature, method.params.base_temperature)
    assert features.shape == (8, 5, 128)
    torch.testing.assert_close(losses["loss"], expected)


@pytest.mark.parametrize("name", ["supcon_s", "selfcon", "scl"])
def test_single_view_and_queue_methods_refuse_local_crops(name: str) -> None:
    config = with_overrides(load_config(None, [f"method.name={name}"]), {"method.local_crops": TWO_SMALL})
    with pytest.raises(ConfigError, match=f"method.local_crops: {name} does not use local crops"):
        validate(config)


def test_ascl_gives_every_local_crop_the_querys_soft_targets() -> None:
    method, batch = queue_method_with_crops("ascl")
    method.eval()
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        params, queue = method.params, method.queue.embeddings
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
        targets, _ = soft_targets(
            neighbour_relations(key, queue, params.sharpen_temperature), params.mode, params.num_neighbors
        )

        def term(name: str) -> torch.Tensor:
            embedding = F.normalize(method.online(batch.views[name]), dim=1)
            return soft_cross_entropy(contrast_logits(embedding, key, queue, params.temperature), targets)

        local = sum(term(f"local_{index}") for index in range(3))
        expected = term("query") + local
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["local_soft_info_nce"], local)


def test_hcsc_local_crops_draw_their_own_negative_prototypes_after_the_querys() -> None:
    method, batch = hcsc_with_prototypes(**{"method.instance_selection": False, "method.local_crops": TWO_SMALL})
    method.eval()
    torch.manual_seed(11)
    with torch.no_grad():
        losses = method(batch, StepInfo(3, 0, 10))
        prototypes = method.prototypes
        clusters = [assignments[batch.indices] for assignments in prototypes.assignments]

        def prototype_term(name: str) -> torch.Tensor:
            """Return one view's PCSC, mean over levels, drawing its masks now (levels below the top)."""
            embedding = F.normalize(method.online(batch.views[name]), dim=1)
            levels = []
            for level in range(3):
                negatives = pcsc_negative_ids(clusters[level], prototypes.centroids[level].shape[0])
                mask = None
                if level < 2:
                    probabilities = pcsc_selection_probs(
                        prototypes.similarity[level],
                        prototypes.concentration[level + 1],
                        clusters[level + 1],
                        negatives,
                    )
                    mask = torch.bernoulli(probabilities.clamp(1e-4, 0.999))
                centroids, concentration = prototypes.centroids[level], prototypes.concentration[level]
                levels.append(pcsc(embedding, centroids, concentration, clusters[level], negatives, mask))
            return torch.stack(levels).mean()

        # The same draws in the method's order: the query's masks, then each local view's own, view by view.
        torch.manual_seed(11)
        query = prototype_term("query")
        local = [prototype_term(f"local_{index}") for index in range(3)]
    assert losses["prototype_loss"] == pytest.approx(float(query), rel=1e-5)
    assert losses["local_prototype_loss"] == pytest.approx(float(sum(local)), rel=1e-5)
