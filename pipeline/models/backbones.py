"""Backbones: ResNet-18/34/50 built from torchvision's blocks (optional CIFAR stem and width), or any timm model."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from pipeline.config import TIMM_PREFIX, ModelConfig
from pipeline.models.norm import NormKind, split_batch_norms
from pipeline.models.norm import norm_layer as make_norm_layer

Block = type[BasicBlock] | type[Bottleneck]
NormFactory = Callable[[int], nn.Module]

DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


def global_avg_pool(feature_map: Tensor) -> Tensor:
    """Return the spatial mean of a feature map: [B, C, H, W] -> [B, C]."""
    return feature_map.mean(dim=(2, 3))


def init_resnet_weights(module: nn.Module) -> None:
    """Initialise convolutions and batch norms inside ``module`` the way torchvision's ResNet does."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            child.reset_parameters()


def _make_stage(
    block: Block, in_channels: int, planes: int, count: int, stride: int, norm: NormFactory
) -> nn.Sequential:
    """Return one ResNet stage of ``count`` blocks; the first one changes stride and width."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))
    blocks = [block(in_channels, planes, stride, downsample, norm_layer=norm)]
    blocks += [block(out_channels, planes, norm_layer=norm) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """ResNet backbone without classifier; at width 64 with the standard stem its state dict is torchvision's."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        depth: int = 50,
        cifar_stem: bool = False,
        width: int = 64,
        norm_layer: NormFactory | None = None,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(DEPTHS)}")
        if width < 1:
            raise ValueError(f"ResNet width must be at least 1, got {width}")
        norm = norm_layer if norm_layer is not None else nn.BatchNorm2d
        block, counts = DEPTHS[depth]
        self.depth = depth
        self.cifar_stem = cifar_stem
        self.width = width
        if cifar_stem:
            # 32 px inputs: keep full resolution through the stem (3x3 stride 1, no max-pool).
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = width
        self.stage_channels: dict[str, int] = {}
        for index, (name, count) in enumerate(zip(self.stage_names, counts, strict=True)):
            stage = _make_stage(block, in_channels, width * 2**index, count, 1 if index == 0 else 2, norm)
            self.add_module(name, stage)
            in_channels = width * 2**index * block.expansion
            self.stage_channels[name] = in_channels
        self.feature_dim = in_channels
        self.total_stride = 8 if cifar_stem else 32
        init_resnet_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        """Return the stem's feature map: [B, 3, H, W] -> [B, width, H / s, W / s] (s = 1 or 4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_index(self, name: str) -> int:
        """Return the position of stage ``name`` in stage_names (0 for layer1)."""
        if name not in self.stage_names:
            raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(self.stage_names)}")
        return self.stage_names.index(name)

    def stage_modules(self) -> list[nn.Module]:
        """Return the stage modules (layer1 to layer4), in order."""
        return [getattr(self, name) for name in self.stage_names]

    def stages_after(self, name: str) -> list[nn.Module]:
        """Return the stage modules that follow stage ``name``, in order."""
        return [getattr(self, later) for later in self.stage_names[self.stage_index(name) + 1 :]]

    def forward_stages(self, x: Tensor, until: str | None = None) -> dict[str, Tensor]:
        """Return {stage name: its output map [B, C_s, H_s, W_s]} for every stage up to ``until`` (default all)."""
        last = self.stage_index(until) if until is not None else len(self.stage_names) - 1
        maps: dict[str, Tensor] = {}
        feature_map = self.stem(x)
        for name in self.stage_names[: last + 1]:
            feature_map = getattr(self, name)(feature_map)
            maps[name] = feature_map
        return maps

    def forward_map(self, x: Tensor) -> Tensor:
        """Return the last feature map [B, feature_dim, H / total_stride, W / total_stride]."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward(self, x: Tensor) -> Tensor:
        """Return the globally average-pooled features [B, feature_dim]."""
        return global_avg_pool(self.forward_map(x))


class TimmBackbone(nn.Module):
    """A timm model without pretrained weights or classifier: images [B, 3, H, W] -> pooled features [B, D].

    ``feature_dim`` is timm's ``num_features`` (what its pooling, or a ViT's class token, yields). A ViT has
    no batch norm, so split and shuffle batch norm change nothing in it.
    """

    def __init__(self, name: str, image_size: int | None = None, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        # Imported here: timm adds over a second to every start, and only timm backbones need it.
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"model.backbone = '{TIMM_PREFIX}{name}': timm has no model {name!r}{hint}")
        options = dict(kwargs or {})
        try:
            self.model, self.create_kwargs = self._create(timm, name, options, image_size)
        except TypeError as exc:
            raise ValueError(f"model.timm_kwargs = {options}: timm's {name} does not accept them ({exc})") from None
        self.name = name
        self.feature_dim = int(self.model.num_features)

    @staticmethod
    def _create(
        timm: Any, name: str, options: dict[str, Any], image_size: int | None
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Return timm's model for ``image_size`` px inputs where it is built for a fixed size (ViTs, Swin).

        Also returns the keyword arguments it was created with (besides ``pretrained`` and ``num_classes``):
        ``timm.create_model(name, num_classes=0, **those)`` builds the same network again (``--format timm``).
        """
        if image_size is None or "img_size" in options:
            return timm.create_model(name, pretrained=False, num_classes=0, **options), options
        sized = {**options, "img_size": image_size}
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **sized), sized
        except TypeError as exc:
            # Convolutional networks take any input size and refuse the argument.
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, pretrained=False, num_classes=0, **options), options

    def forward(self, x: Tensor) -> Tensor:
        """Return the model's pooled features [B, feature_dim]."""
        return self.model(x)


def check_timm_backbone(model_cfg: ModelConfig, image_size: int, norm: NormKind) -> None:
    """Raise ValueError naming ``model.backbone``, ``model.timm_kwargs`` or ``model.batch_norm`` if it cannot be built.

    Built on the meta device: no memory is allocated and no weights are initialised, so it costs milliseconds.
    """
    with torch.device("meta"):
        build_backbone(model_cfg, norm, image_size)


def build_backbone(model_cfg: ModelConfig, norm: NormKind, image_size: int | None = None) -> ResNet | TimmBackbone:
    """Return the backbone the model config describes, with plain or split batch norm (or layer norm: ResNets only).

    A timm model is built for ``image_size`` px inputs where it has a fixed size; split batch norm replaces its
    batch norms.
    """
    if model_cfg.uses_timm:
        if norm == "layer":
            raise ValueError(f"model.backbone = {model_cfg.backbone!r}: layer norm is built into ResNets only")
        backbone = TimmBackbone(model_cfg.backbone.removeprefix(TIMM_PREFIX), image_size, model_cfg.timm_kwargs)
        if norm == "split":
            split_batch_norms(backbone, model_cfg.bn_splits)
        return backbone
    depth = int(model_cfg.backbone.removeprefix("resnet"))
    return ResNet(depth, model_cfg.cifar_stem, model_cfg.width, make_norm_layer(norm, model_cfg.bn_splits))
