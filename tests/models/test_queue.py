"""LabelledQueue: initial state, ring-buffer writes with wrap-around, labels, checkpoint round-trip, divisibility."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.queue import LabelledQueue, check_divisible


def test_initial_queue_is_unit_rows_with_random_labels_and_reproducible() -> None:
    queue = LabelledQueue(12, 5, num_classes=3, generator=torch.Generator().manual_seed(0))
    same = LabelledQueue(12, 5, num_classes=3, generator=torch.Generator().manual_seed(0))
    other = LabelledQueue(12, 5, num_classes=3, generator=torch.Generator().manual_seed(1))
    assert queue.embeddings.shape == (12, 5) and queue.labels.shape == (12,)
    torch.testing.assert_close(queue.embeddings.norm(dim=1), torch.ones(12))
    assert queue.labels.dtype == torch.long and queue.labels.min() >= 0 and queue.labels.max() < 3
    torch.testing.assert_close(queue.embeddings, same.embeddings)
    assert torch.equal(queue.labels, same.labels)
    assert not torch.equal(queue.embeddings, other.embeddings)
    assert queue.position == 0 and int(queue.pointer) == 0


def test_unlabelled_queue_starts_with_minus_one_and_uses_the_global_rng() -> None:
    torch.manual_seed(3)
    first = LabelledQueue(8, 4)
    torch.manual_seed(3)
    second = LabelledQueue(8, 4)
    assert torch.equal(first.labels, torch.full((8,), -1))
    torch.testing.assert_close(first.embeddings, second.embeddings)


def test_buffers_are_in_the_state_dict() -> None:
    assert set(LabelledQueue(4, 2).state_dict()) == {"embeddings", "labels", "pointer"}


def test_content_after_several_enqueues_matches_a_reference_ring_buffer() -> None:
    size, dim, batch = 12, 3, 4
    queue = LabelledQueue(size, dim, num_classes=5, generator=torch.Generator().manual_seed(0))
    expected_embeddings = queue.embeddings.clone()
    expected_labels = queue.labels.clone()
    pointer = 0
    generator = torch.Generator().manual_seed(1)
    for step in range(7):
        keys = torch.randn(batch, dim, generator=generator)
        labels = torch.randint(0, 5, (batch,), generator=generator)
        queue.enqueue(keys, labels)
        for row in range(batch):
            expected_embeddings[pointer] = keys[row]
            expected_labels[pointer] = labels[row]
            pointer = (pointer + 1) % size
        assert queue.position == pointer == int(queue.pointer), f"step {step}"
        torch.testing.assert_close(queue.embeddings, expected_embeddings)
        assert torch.equal(queue.labels, expected_labels)


def test_pointer_wraps_around_to_the_start() -> None:
    queue = LabelledQueue(6, 2)
    positions = []
    for value in range(4):
        queue.enqueue(torch.full((3, 2), float(value)), torch.full((3,), value))
        positions.append(queue.position)
    assert positions == [3, 0, 3, 0]
    # The third batch overwrote rows 0..2 and the fourth rows 3..5.
    torch.testing.assert_close(queue.embeddings, torch.tensor([2.0] * 3 + [3.0] * 3)[:, None].expand(6, 2))
    assert queue.labels.tolist() == [2, 2, 2, 3, 3, 3]


def test_enqueue_without_labels_marks_entries_unknown() -> None:
    queue = LabelledQueue(4, 2, num_classes=3)
    queue.enqueue(torch.ones(2, 2))
    assert queue.labels[:2].tolist() == [-1, -1]
    assert queue.labels[2:].min() >= 0


def test_enqueue_detaches_and_casts_to_the_queue_dtype() -> None:
    queue = LabelledQueue(4, 2)
    keys = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    queue.enqueue(keys * 2, torch.tensor([1, 0], dtype=torch.int32))
    assert queue.embeddings.dtype == torch.float32 and not queue.embeddings.requires_grad
    assert queue.labels.dtype == torch.long and queue.labels[:2].tolist() == [1, 0]
    torch.testing.assert_close(queue.embeddings[:2], torch.full((2, 2), 2.0))


def test_state_dict_round_trip_restores_pointer_and_content() -> None:
    queue = LabelledQueue(8, 3, num_classes=4, generator=torch.Generator().manual_seed(0))
    for value in range(3):
        queue.enqueue(torch.full((2, 3), float(value)), torch.full((2,), value))
    restored = LabelledQueue(8, 3, num_classes=4, generator=torch.Generator().manual_seed(9))
    restored.load_state_dict(queue.state_dict())
    assert restored.position == queue.position == 6
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    assert torch.equal(restored.labels, queue.labels)
    # Both continue writing at the same place.
    queue.enqueue(torch.full((2, 3), 9.0), torch.full((2,), 3))
    restored.enqueue(torch.full((2, 3), 9.0), torch.full((2,), 3))
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    assert restored.position == queue.position == 0


def test_state_dict_round_trip_through_a_parent_module() -> None:
    parent = torch.nn.Module()
    parent.queue = LabelledQueue(4, 2)
    parent.queue.enqueue(torch.ones(2, 2))
    other = torch.nn.Module()
    other.queue = LabelledQueue(4, 2)
    other.load_state_dict(parent.state_dict())
    assert other.queue.position == 2


def test_enqueue_rejects_a_batch_that_does_not_divide_the_queue() -> None:
    queue = LabelledQueue(6, 2)
    with pytest.raises(ValueError, match=r"6.*4"):
        queue.enqueue(torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        queue.enqueue(torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        queue.enqueue(torch.ones(3, 2), torch.zeros(2, dtype=torch.long))
    assert queue.position == 0


def test_check_divisible_names_both_numbers() -> None:
    check_divisible(65536, 256)
    with pytest.raises(ValueError, match=r"queue length 1000 .* global batch size 256"):
        check_divisible(1000, 256)
    with pytest.raises(ValueError, match="0"):
        check_divisible(1000, 0)
