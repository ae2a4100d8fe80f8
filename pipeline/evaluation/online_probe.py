"""The online linear probe: a linear head trained every step beside pretraining, never touching the encoder.

Each batch carries one more view, the un-augmented evaluation view (``ONLINE_PROBE_VIEW``; it draws no
random numbers, so the method's own views are unchanged). The backbone embeds it in inference mode (batch
norm from its running statistics, which it leaves as they are; no autograd graph), and the head takes one
SGD step on those detached features. Its loss is the mean over the global batch's labelled images (three
small all-reduces: the count, then the two gradients), so every worker holds the same head. Each epoch
the head classifies the test split's features (the ones the kNN monitor embeds) and logs ``online/top1``;
its training cross-entropy and accuracy over the epoch's labelled images are ``online/train_loss`` and
``online/train_top1``. The head starts at zero and draws no random numbers. A batch with no labelled image
gives a zero gradient, yet the optimiser's momentum still moves the head a little: with a mixture of
labelled and unlabelled batches (STL-10's) the head coasts through the unlabelled ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.config import OnlineProbeConfig
from pipeline.training.step import autocast

# The batch key of the un-augmented view the probe trains on; the loop removes it before the method's forward.
ONLINE_PROBE_VIEW = "online_probe"


def probe_enabled(config: OnlineProbeConfig, train_labels: np.ndarray | torch.Tensor, num_classes: int) -> bool:
    """Return whether the online probe runs: ``enabled`` as set, or (``auto``) whether any training label is known."""
    if config.enabled != "auto":
        return bool(config.enabled)
    return num_classes > 1 and bool((torch.as_tensor(train_labels) >= 0).any())


class OnlineProbe:
    """A linear head on a backbone's frozen features with its own SGD optimiser, trained one step per batch."""

    def __init__(self, backbone: nn.Module, num_classes: int, config: OnlineProbeConfig, device: torch.device) -> None:
        self.backbone = backbone
        # skip_init: the head starts at zero without drawing from the global random stream, as nn.Linear would.
        self.head = torch.nn.utils.skip_init(nn.Linear, backbone.feature_dim, num_classes, device=device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.SGD(
            self.head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )

    @torch.no_grad()
    def features(self, images: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
        """Return the backbone's float32 pooled features of ``images`` in inference mode, its mode restored."""
        was_training = self.backbone.training
        self.backbone.eval()
        with autocast(images.device, amp_dtype):
            pooled = self.backbone(images)
        self.backbone.train(was_training)
        return pooled.float()

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
    ) -> dict[str, torch.Tensor]:
        """Return the batch's summed probe loss, correct and labelled counts (detached) after one head update.

        The loss is the mean cross-entropy over the labelled images of the global batch: the count is summed
        across workers before the backward pass and the gradients after it. Images without a label, or whose
        features overflowed (fp16), do not count.
        """
        features = self.features(images, amp_dtype)
        usable = (labels >= 0) & torch.isfinite(features).all(dim=1)
        features = torch.where(usable[:, None], features, torch.zeros_like(features))
        count = usable.sum().float()
        total = count.clone()
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            dist.all_reduce(total)
        logits = self.head(features)
        # A sum over usable images, not a mean over a possibly empty set: a batch without labels gives 0, not NaN.
        losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none").mul(usable)
        self.optimizer.zero_grad(set_to_none=True)
        (losses.sum() / total.clamp_min(1)).backward()
        if distributed:
            for parameter in self.head.parameters():
                dist.all_reduce(parameter.grad)
        self.optimizer.step()
        correct = ((logits.detach().argmax(dim=1) == labels) & usable).sum().float()
        return {"loss_sum": losses.detach().sum(), "correct": correct, "labelled": count}

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Return the head's class predictions ``[n]`` for unnormalised backbone features ``[n, D]``."""
        return self.head(features.float()).argmax(dim=1)

    def state_dict(self) -> dict[str, Any]:
        """Return the head's and its optimiser's state, for the run's checkpoint."""
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the head and its optimiser from ``state_dict``'s output."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
