"""Pure loss functions of docs/methods.md: functions of tensors only, usable on their own."""

from pipeline.losses.contrastive import info_nce, supcon

__all__ = ["info_nce", "supcon"]
