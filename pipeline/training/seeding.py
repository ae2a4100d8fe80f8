"""Seeding every random number generator a worker uses from one seed and its position (rank, epoch)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, *parts: int) -> None:
    """Seed Python, NumPy and torch from ``seed`` and ``parts`` (e.g. rank and epoch)."""
    value = int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
