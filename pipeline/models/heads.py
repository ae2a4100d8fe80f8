"""Projection and prediction heads that sit on top of a backbone's pooled features."""

from __future__ import annotations

from torch import nn


def _check_dims(**dims: int) -> None:
    """Raise ValueError naming the first dimension that is not a positive integer."""
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ProjectionHead(nn.Sequential):
    """MoCo v2 / SupCon projection MLP: Linear(in, hidden) - ReLU - Linear(hidden, out); [B, in] -> [B, out]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim


class PredictionHead(nn.Sequential):
    """BYOL predictor: Linear(in, hidden) - BatchNorm1d - ReLU - Linear(hidden, out); [B, in] -> [B, out]."""

    def __init__(self, in_dim: int = 128, hidden_dim: int = 512, out_dim: int = 128) -> None:
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
