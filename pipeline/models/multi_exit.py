"""SelfCon's multi-exit network: a backbone plus exits after intermediate stages, each with its own head."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from pipeline.models.backbones import ResNet, global_avg_pool, init_resnet_weights
from pipeline.models.heads import ProjectionHead

ExitType = Literal["fc", "same"]
EXIT_TYPES = ("fc", "same")


class FcExit(nn.Module):
    """Exit that pools a stage map and maps it linearly to the backbone's feature width."""

    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, feature_map: Tensor) -> Tensor:
        """Return exit features [B, out_dim] from a stage map [B, in_channels, H, W]."""
        return self.fc(global_avg_pool(feature_map))


class StageExit(nn.Module):
    """Exit made of freshly initialised copies of the backbone's remaining stages, then pooling."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        if not stages:
            raise ValueError("StageExit needs at least one stage to copy, got none")
        # Fresh weights: an exact copy would start as a clone of the backbone path it branches beside.
        self.stages = nn.Sequential(*(copy.deepcopy(stage) for stage in stages))
        init_resnet_weights(self.stages)

    def forward(self, feature_map: Tensor) -> Tensor:
        """Return exit features [B, C_last] from a stage map [B, C, H, W]."""
        return global_avg_pool(self.stages(feature_map))


class MultiExitNetwork(nn.Module):
    """Backbone plus exits after intermediate stages; every branch has its own projection head."""

    def __init__(
        self,
        backbone: ResNet,
        exits: Sequence[str] = ("layer2",),
        exit_type: ExitType = "fc",
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        if exit_type not in EXIT_TYPES:
            raise ValueError(f"unknown exit type {exit_type!r}; expected one of {', '.join(EXIT_TYPES)}")
        if isinstance(exits, str) or not exits:
            raise ValueError(f"exits must be a non-empty list of stage names, got {exits!r}")
        if len(set(exits)) != len(exits):
            raise ValueError(f"exits must be distinct stage names, got {list(exits)}")
        self.last_stage = backbone.stage_names[-1]
        for name in exits:
            if backbone.stage_index(name) == backbone.stage_index(self.last_stage):
                raise ValueError(f"an exit after {name!r} would duplicate the backbone; choose an earlier stage")
        self.backbone = backbone
        self.exit_names = tuple(exits)
        self.exit_type = exit_type
        dim = backbone.feature_dim
        hidden = proj_hidden_dim if proj_hidden_dim is not None else dim
        self.exits = nn.ModuleDict({name: self._make_exit(name) for name in exits})
        self.exit_heads = nn.ModuleDict({name: ProjectionHead(dim, hidden, proj_dim) for name in exits})
        self.head = ProjectionHead(dim, hidden, proj_dim)

    def _make_exit(self, name: str) -> nn.Module:
        """Return the exit branching after stage ``name``, of this network's exit type."""
        if self.exit_type == "fc":
            return FcExit(self.backbone.stage_channels[name], self.backbone.feature_dim)
        return StageExit(self.backbone.stages_after(name))

    @property
    def num_branches(self) -> int:
        """Return the number of outputs: one per exit plus the backbone."""
        return len(self.exit_names) + 1

    def features(self, x: Tensor) -> list[Tensor]:
        """Return pooled pre-head features, each [B, feature_dim], ordered [exit_1, ..., backbone]."""
        maps = self.backbone.forward_stages(x)
        exit_features = [self.exits[name](maps[name]) for name in self.exit_names]
        return [*exit_features, global_avg_pool(maps[self.last_stage])]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return unnormalised embeddings, each [B, proj_dim], ordered [exit_1, ..., backbone]."""
        heads = [*(self.exit_heads[name] for name in self.exit_names), self.head]
        return [head(feature) for head, feature in zip(heads, self.features(x), strict=True)]
