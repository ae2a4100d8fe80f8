"""Pure loss functions of METHODS.md: functions of tensors only, usable on their own."""

from pipeline.losses.contrastive import info_nce, supcon

__all__ = ["info_nce", "supcon"]
