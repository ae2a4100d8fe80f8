"""Weighted kNN against a brute-force loop reference, plus edge cases and the raw-pixel baseline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.evaluation import knn_top1, pixel_knn_top1, weighted_knn_predict


def knn_reference(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> list[int]:
    """Return predictions computed one test row and one neighbour at a time."""
    predictions = []
    for test_row in test_features.tolist():
        similarities = [
            (sum(a * b for a, b in zip(test_row, train_row, strict=True)), index)
            for index, train_row in enumerate(train_features.tolist())
        ]
        similarities.sort(reverse=True)
        scores = [0.0] * num_classes
        for similarity, index in similarities[:k]:
            scores[int(train_labels[index])] += math.exp(similarity / temperature)
        predictions.append(max(range(num_classes), key=lambda c: scores[c]))
    return predictions


def random_set(rows: int, dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return random unit features (float64, so similarity ties are practically impossible) and labels."""
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=1)
    return features, torch.randint(0, num_classes, (rows,), generator=generator)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (7, 0.1), (20, 0.5), (60, 0.07)])
def test_matches_the_loop_reference(k: int, temperature: float) -> None:
    train_features, train_labels = random_set(60, 8, 5, seed=0)
    test_features, _ = random_set(25, 8, 5, seed=1)
    predictions = weighted_knn_predict(train_features, train_labels, test_features, 5, k=k, temperature=temperature)
    expected = knn_reference(train_features, train_labels, test_features, 5, k, temperature)
    assert predictions.dtype == torch.long
    assert predictions.tolist() == expected


def test_k_larger_than_the_bank_uses_every_training_row() -> None:
    train_features, train_labels = random_set(9, 4, 3, seed=2)
    test_features, _ = random_set(11, 4, 3, seed=3)
    predictions = weighted_knn_predict(train_features, train_labels, test_features, 3, k=200)
    assert predictions.tolist() == knn_reference(train_features, train_labels, test_features, 3, 9, 0.1)


def test_chunking_gives_identical_results() -> None:
    train_features, train_labels = random_set(80, 6, 4, seed=4)
    test_features, _ = random_set(37, 6, 4, seed=5)
    whole = weighted_knn_predict(train_features, train_labels, test_features, 4, k=10, chunk_size=1024)
    for chunk_size in (1, 5, 36, 37):
        chunked = weighted_knn_predict(train_features, train_labels, test_features, 4, k=10, chunk_size=chunk_size)
        assert torch.equal(chunked, whole), chunk_size


def test_float32_features_and_large_similarities_do_not_overflow() -> None:
    train_features, train_labels = random_set(50, 6, 4, seed=6)
    test_features, _ = random_set(20, 6, 4, seed=7)
    predictions = weighted_knn_predict(
        train_features.float() * 30, train_labels, test_features.float() * 30, 4, k=10, temperature=0.01
    )
    # Log-weights reach 9e4 (exp overflows float32 without the max shift) and the nearest neighbour dominates.
    nearest = train_labels[(test_features @ train_features.T).argmax(dim=1)]
    assert torch.equal(predictions, nearest)


def test_separable_toy_set_is_classified_perfectly() -> None:
    centres = torch.eye(4)  # four orthogonal class directions
    generator = torch.Generator().manual_seed(8)
    train_labels = torch.arange(4).repeat(10)
    test_labels = torch.arange(4).repeat(5)
    train = F.normalize(centres[train_labels] + 0.05 * torch.randn(40, 4, generator=generator), dim=1)
    test = F.normalize(centres[test_labels] + 0.05 * torch.randn(20, 4, generator=generator), dim=1)
    assert knn_top1(train, train_labels, test, test_labels, 4, k=5) == 100.0


def test_top1_is_the_percentage_of_correct_predictions() -> None:
    train_features, train_labels = random_set(40, 5, 3, seed=9)
    test_features, test_labels = random_set(16, 5, 3, seed=10)
    expected = knn_reference(train_features, train_labels, test_features, 3, 8, 0.1)
    correct = sum(int(p == t) for p, t in zip(expected, test_labels.tolist(), strict=True))
    accuracy = knn_top1(train_features, train_labels, test_features, test_labels, 3, k=8)
    assert accuracy == pytest.approx(100.0 * correct / 16)


def test_pixel_baseline_flattens_and_normalises_images() -> None:
    generator = torch.Generator().manual_seed(11)
    train_images = torch.rand(30, 3, 4, 4, generator=generator)
    test_images = torch.rand(12, 3, 4, 4, generator=generator)
    train_labels = torch.randint(0, 3, (30,), generator=generator)
    test_labels = torch.randint(0, 3, (12,), generator=generator)
    # Scaling an image must not change its normalised pixel vector, hence not the result.
    scale = torch.rand(30, 1, 1, 1, generator=generator) + 0.5
    accuracy = pixel_knn_top1(train_images * scale, train_labels, test_images, test_labels, 3, k=5, temperature=0.2)
    flat_train = F.normalize(train_images.reshape(30, -1), dim=1)
    flat_test = F.normalize(test_images.reshape(12, -1), dim=1)
    assert accuracy == knn_top1(flat_train, train_labels, flat_test, test_labels, 3, k=5, temperature=0.2)


def test_pixel_baseline_accepts_integer_images_and_separates_brightness_patterns() -> None:
    patterns = torch.tensor([[255, 0], [0, 255]], dtype=torch.uint8)  # class c lights pixel c
    labels = torch.tensor([0, 1]).repeat(5)
    images = patterns[labels].view(10, 1, 1, 2)
    assert pixel_knn_top1(images, labels, images, labels, 2, k=3) == 100.0


def test_rejects_bad_inputs() -> None:
    features, labels = random_set(5, 3, 2, seed=12)
    with pytest.raises(ValueError, match="memory bank is empty"):
        weighted_knn_predict(features[:0], labels[:0], features, 2)
    with pytest.raises(ValueError, match="train labels"):
        weighted_knn_predict(features, labels[:4], features, 2)
    with pytest.raises(ValueError, match=r"\(5, 3\) and \(5, 2\)"):
        weighted_knn_predict(features, labels, features[:, :2], 2)
    with pytest.raises(ValueError, match="test labels"):
        knn_top1(features, labels, features, labels[:3], 2)
