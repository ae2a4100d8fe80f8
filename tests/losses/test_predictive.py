"""CPC's InfoNCE over a grid of patch vectors against a brute-force loop, and its targets for every step k."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import cpc_infonce


def random_grid(batch: int = 2, grid: int = 4, steps: int = 2, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float64 patch vectors [B, G, G, D] and predictions [B, G, G, K, D]."""
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(batch, grid, grid, dim, generator=generator, dtype=torch.float64)
    predictions = torch.randn(batch, grid, grid, steps, dim, generator=generator, dtype=torch.float64)
    return vectors, predictions


def brute_force(vectors: torch.Tensor, predictions: torch.Tensor, first_step: int = 1) -> float:
    """Return the loss by explicit loops: every (image, row, column) prediction against every patch of the batch."""
    batch, grid, _, steps, _ = predictions.shape
    per_step = []
    for j in range(steps):
        k = first_step + j
        terms = []
        for b in range(batch):
            for r in range(grid - k):
                for c in range(grid):
                    query = predictions[b, r, c, j]
                    cells = [(b2, r2, c2) for b2 in range(batch) for r2 in range(grid) for c2 in range(grid)]
                    scores = [float(query @ vectors[cell]) for cell in cells]
                    positive = float(query @ vectors[b, r + k, c])
                    terms.append(math.log(sum(math.exp(s) for s in scores)) - positive)
        per_step.append(sum(terms) / len(terms))
    return sum(per_step)


@pytest.mark.parametrize("first_step", [1, 2])
def test_loss_matches_the_brute_force_loop(first_step: int) -> None:
    vectors, predictions = random_grid(grid=5)
    expected = brute_force(vectors, predictions, first_step)
    assert float(cpc_infonce(vectors, predictions, first_step)) == pytest.approx(expected, rel=1e-10)


def test_rows_without_a_target_do_not_count() -> None:
    vectors, predictions = random_grid()
    changed = predictions.clone()
    changed[:, -1, :, 0] += 5.0  # the last row has nothing 1 row below
    changed[:, -2:, :, 1] -= 3.0  # nor anything 2 rows below in its last two rows
    assert float(cpc_infonce(vectors, changed)) == pytest.approx(float(cpc_infonce(vectors, predictions)), rel=1e-12)


@pytest.mark.parametrize(("first_step", "j"), [(1, 0), (1, 1), (1, 2), (3, 0), (3, 1)])
def test_each_prediction_targets_the_patch_its_offset_below(first_step: int, j: int) -> None:
    # Orthonormal targets: a prediction equal to a scaled copy of its target scores ~0 loss, one that
    # points at the patch a row nearer scores ~the scale; the other offsets' zero predictions add log N each.
    batch, grid, steps = 2, 6, 3 if first_step == 1 else 2
    k = first_step + j
    targets = torch.eye(batch * grid * grid, dtype=torch.float64).view(batch, grid, grid, -1)
    right = torch.zeros(batch, grid, grid, steps, targets.shape[-1], dtype=torch.float64)
    wrong = right.clone()
    right[:, : grid - k, :, j] = 30.0 * targets[:, k:, :]
    wrong[:, : grid - k, :, j] = 30.0 * targets[:, k - 1 : grid - 1, :]
    others = (steps - 1) * math.log(batch * grid * grid)
    assert float(cpc_infonce(targets, right, first_step)) == pytest.approx(others, abs=1e-9)
    assert float(cpc_infonce(targets, wrong, first_step)) == pytest.approx(others + 30.0, abs=1e-6)


def test_gradients_reach_vectors_and_predictions() -> None:
    vectors, predictions = random_grid()
    vectors.requires_grad_(True)
    predictions.requires_grad_(True)
    cpc_infonce(vectors, predictions).backward()
    assert vectors.grad.abs().sum() > 0 and predictions.grad.abs().sum() > 0
    # Predictions of rows with no target get no gradient.
    assert predictions.grad[:, -1, :, 0].abs().sum() == 0


def test_bad_shapes_are_refused() -> None:
    vectors, predictions = random_grid(steps=2)
    with pytest.raises(ValueError, match="do not match"):
        cpc_infonce(vectors[:, :, :, :2], predictions)
    _, too_far = random_grid(steps=4)
    with pytest.raises(ValueError, match=r"first_step \+ steps - 1 < rows"):
        cpc_infonce(vectors, too_far)
    with pytest.raises(ValueError, match=r"first_step \+ steps - 1 < rows"):
        cpc_infonce(vectors, predictions, first_step=3)


def test_each_workers_predictions_against_the_whole_batch_average_to_the_loss() -> None:
    vectors, predictions = random_grid(batch=4, grid=4)
    whole = cpc_infonce(vectors, predictions)
    shares = [cpc_infonce(vectors, predictions[first : first + 2], first_image=first) for first in (0, 2)]
    torch.testing.assert_close(torch.stack(shares).mean(), whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="from image 3"):
        cpc_infonce(vectors, predictions[:2], first_image=3)
