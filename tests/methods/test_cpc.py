"""CPC v2 method: its grid view, the loss on its own encodings in every direction, layer norm, errors, evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import load_config, with_overrides
from pipeline.data.recipes import PatchGrid
from pipeline.losses import cpc_infonce
from pipeline.methods import Batch, StepInfo, get_method
from pipeline.methods.augmentations import cpc_view
from pipeline.methods.cpc.method import orient
from pipeline.models.patch_grid import cut_grid
from tests.data.test_views import random_image
from tests.support.methods import make_method

# 16 px images: a 3x3 grid of 8 px patches, predicting 1 and 2 rows ahead.
GRID = {"method.grid": 3, "method.skip_steps": 0, "method.steps": 2}


def make(**overrides: object):
    """Return a tiny CPC on one worker (batch 4, 16 px, 3x3 grid)."""
    return make_method("cpc", num_classes=3, batch_size=4, **{**GRID, **overrides})


def batch_of(images: torch.Tensor) -> Batch:
    """Return a batch whose grid view is the deterministic grid of ``images``."""
    return Batch({"grid": cut_grid(images, 3)}, torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))


def test_the_view_is_a_crop_and_flip_cut_into_the_configured_grid() -> None:
    method = make(**{"method.patch_crop_scale": [0.4, 0.9], "method.channel_drop": 0.5})
    views = method.views(method.context.config)
    assert views == {"grid": cpc_view(PatchGrid(3, (0.4, 0.9), 0.5, 0.5))}
    output = method.train_transform(method.context.config)
    assert output(random_image(16, 16))["grid"].shape == (9, 3, 8, 8)


@pytest.mark.parametrize(
    ("direction", "origin", "ahead"),
    [("down", (0, 0), (1, 0)), ("up", (3, 0), (2, 0)), ("right", (0, 0), (0, 1)), ("left", (0, 3), (0, 2))],
)
def test_orient_turns_each_direction_downwards(direction: str, origin: tuple[int, int], ahead: tuple[int, int]) -> None:
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    turned = orient(grid, direction)[0, :, :, 0]
    # The oriented grid starts where the direction starts; one row below is the next cell that way.
    assert turned[0, 0] == grid[0, origin[0], origin[1], 0]
    assert turned[1, 0] == grid[0, ahead[0], ahead[1], 0]


def test_loss_is_infonce_on_its_own_targets_and_predictions_averaged_over_directions() -> None:
    method = make(**{"method.directions": ["down", "up", "left"], "method.target_dim": 16}).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        losses = method(batch_of(images), StepInfo(0, 0, 10))
        vectors = method.encoder.patch_vectors(cut_grid(images, 3))
        pairs = {d: method.predict(vectors, d) for d in ("down", "up", "left")}
    assert vectors.shape == (4, 3, 3, 32)
    targets, predictions = pairs["up"]
    assert targets.shape == (4, 3, 3, 16) and predictions.shape == (4, 3, 3, 2, 16)
    # The targets are the linear map of the oriented patch vectors; predictions carry emb_scale 0.1.
    torch.testing.assert_close(targets, method.targets["up"](vectors.flip(1)))
    contexts = method.contexts["up"](vectors.flip(1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(predictions.flatten(-2), 0.1 * method.predictors["up"](contexts))
    expected = torch.stack([cpc_infonce(*pair, first_step=1) for pair in pairs.values()]).mean()
    assert float(losses["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert set(losses) == {"loss", "cpc"}


def test_defaults_predict_only_the_first_row_that_shares_no_pixels() -> None:
    # 32 px, 7x7 grid of 8 px patches at stride 4: rows 1 and 2 below overlap the patch, row 3 does not.
    method = make_method("cpc", num_classes=3, batch_size=2, **{"data.image_size": 32}).eval()
    assert method.params.skip_steps == 2 and method.params.steps == 3 and method.offsets == 1
    images = torch.randn(2, 3, 32, 32)
    batch = Batch({"grid": cut_grid(images, 7)}, torch.zeros(2, dtype=torch.long), torch.arange(2))
    with torch.no_grad():
        loss = method(batch, StepInfo(0, 0, 10))["loss"]
        targets, predictions = method.predict(method.encoder.patch_vectors(cut_grid(images, 7)), "down")
    assert targets.shape == (2, 7, 7, 64) and predictions.shape == (2, 7, 7, 1, 64)
    assert float(loss) == pytest.approx(float(cpc_infonce(targets, predictions, first_step=3)), rel=1e-5)


def test_predictions_of_a_row_come_from_the_rows_above_only() -> None:
    method = make(**{"method.grid": 4, "method.steps": 3, "data.image_size": 20, "method.target_dim": None}).eval()
    vectors = torch.randn(2, 4, 4, 32)
    changed = vectors.clone()
    changed[:, 2] += 1.0
    with torch.no_grad():
        _, before = method.predict(vectors, "down")
        _, after = method.predict(changed, "down")
    assert torch.equal(before[:, :2], after[:, :2]) and not torch.allclose(before[:, 2], after[:, 2])


def test_layer_norm_by_default_batch_norm_on_request() -> None:
    def batch_norms(method: nn.Module) -> int:
        return sum(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in method.modules())

    assert batch_norms(make()) == 0
    assert batch_norms(make(**{"method.norm": "batch"})) > 0


def test_training_steps_lower_the_loss_and_reach_every_part() -> None:
    method = make(**{"method.directions": ["down", "right"]})
    images = torch.randn(4, 3, 16, 16)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = method(batch_of(images), StepInfo(0, 0, 10))["loss"]
        optimizer.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        optimizer.step()
    assert losses[-1] < losses[0]
    names = ("encoder.backbone.conv1", "contexts.down.project", "contexts.right.blocks", "predictors.right", "targets")
    for name in names:
        grads = [p.grad for n, p in method.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_the_evaluated_features_are_the_mean_patch_vector_of_the_whole_image() -> None:
    method = make().eval()
    images = torch.randn(2, 3, 16, 16)
    network = method.evaluation_networks()["backbone"]
    with torch.no_grad():
        torch.testing.assert_close(network(images), method.encoder.patch_vectors(cut_grid(images, 3)).mean(dim=(1, 2)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.steps": 3}, "need skip_steps < steps < grid"),
        ({"method.skip_steps": 2}, "got skip_steps 2, steps 2, grid 3"),
        ({"method.emb_scale": 0}, "emb_scale"),
        ({"method.directions": ["down", "down"]}, "each once"),
        ({"method.directions": ["sideways"]}, "directions"),
        ({"method.patch_crop_scale": [0.9, 0.2]}, "patch_crop_scale"),
        ({"method.channel_drop": 1.5}, "channel_drop"),
    ],
)
def test_bad_parameters_name_their_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with_overrides(load_config(None, ["method.name=cpc"]), {**GRID, **overrides})


def test_validate_names_the_image_size_and_moot_batch_norm_settings() -> None:
    cpc = get_method("cpc")
    config = with_overrides(load_config("cpc_synthetic.yaml"), {"data.image_size": 30})
    with pytest.raises(ValueError, match=r"method.grid = 7 does not fit data.image_size = 30: .*got 7.5"):
        cpc.validate(config, world_size=1)
    config = with_overrides(load_config("cpc_synthetic.yaml"), {"model.batch_norm": "split"})
    with pytest.raises(ValueError, match="model.batch_norm = 'split' .*method.norm = 'layer'"):
        cpc.validate(config, world_size=1)
    cpc.validate(with_overrides(config, {"method.norm": "batch"}), world_size=1)
