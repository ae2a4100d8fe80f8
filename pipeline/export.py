"""Export a run's evaluation networks as plain weights, and load them back.

``python -m pipeline.export --run RUN [--epoch N] --format torchvision|timm|state_dict --out PATH``.

RUN is a run folder or an MLflow run id, resolved as ``pipeline.evaluate`` does; the checkpoint is
``epoch_NNNN`` for ``--epoch N``, else the newest complete one. ``--out`` is one file (``torch.save``)
holding a JSON-able ``metadata`` block (source run, checkpoint, method, model config, input size and
normalisation, one description per exported network) and the weights:

- ``torchvision``: ``{"metadata", "state_dict"}`` for the ``backbone`` network only (exits are no
  torchvision model). ``state_dict`` loads with ``strict=True`` into ``torchvision.models.resnetNN()``
  after ``model.fc = nn.Identity()`` (no classifier is exported); a CIFAR-stem backbone also needs
  ``model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)`` and
  ``model.maxpool = nn.Identity()``; ``metadata["torchvision"]["replace"]`` lists exactly these. A width
  other than 64, a layer-norm backbone or CPC's patch-grid encoder has no torchvision counterpart: refused.
- ``timm``: ``{"metadata", "state_dict"}`` for the ``backbone`` of a run on a timm backbone only. It loads with
  ``strict=True`` into ``timm.create_model(metadata["timm"]["model"], num_classes=0, **metadata["timm"]["kwargs"])``
  (the kwargs include ``img_size`` where the model was built for the run's input size). Other backbones: refused.
- ``state_dict``: ``{"metadata", "networks": {name: state dict}}`` with every evaluation network
  (SelfCon: ``backbone`` and ``exit_<stage>``, each a whole network from the image to its features).

``pipeline.load_backbone(PATH, network="backbone")`` rebuilds either kind as a ready module in eval mode.
Batch norm of any training mode (split, shuffle, sync) is exported and rebuilt as plain batch norm: in
eval mode they compute the same thing, and a downstream fine-tune needs no batch-splitting constraint.

``log_final_model`` logs a finished run's backbone, rebuilt the same way, as the MLflow model ``backbone``
of its pretraining run (``mlflow.pytorch.load_model("runs:/<run id>/backbone")``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import ConfigError, ExperimentConfig, ModelConfig
from pipeline.data.views import normalization
from pipeline.evaluate import run_folder
from pipeline.evaluation.stage import EvaluationError, evaluation_networks, load_run_config
from pipeline.methods.selfcon.method import BranchFeatures
from pipeline.models.backbones import ResNet, TimmBackbone, build_backbone
from pipeline.models.multi_exit import FcExit, StageExit
from pipeline.models.patch_grid import PatchGridEncoder
from pipeline.record.run import RunHandle, log_model, logged_model_id
from pipeline.training.checkpoints import (
    checkpoint_epoch,
    checkpoint_folders,
    epoch_dir_name,
    incomplete_reason,
    latest_checkpoint,
    read_run_id,
)

FORMATS = ("torchvision", "timm", "state_dict")
# The MLflow model a finished pretraining run logs (``runs:/<run id>/backbone``).
MODEL_NAME = "backbone"
TORCHVISION_WIDTH = 64
CIFAR_CONV1 = "nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)"
# The number of classes only seeds a queue's initial labels and steers training-time metrics; the checkpoint
# overwrites what it shapes, so exporting never reads the data set.
_ANY_NUM_CLASSES = 1


class ExportError(ValueError):
    """The run cannot be exported in the asked form; the message names the value and what to do instead."""


class ExitFeatures(nn.Module):
    """A SelfCon exit as a whole network: the backbone's stages up to ``stage``, then the exit's pooled features."""

    def __init__(self, backbone: ResNet, stage: str, exit_module: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.stage = stage
        self.exit = exit_module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the exit's features ``[B, feature_dim]`` of ``images`` ``[B, 3, H, W]``."""
        return self.exit(self.backbone.forward_stages(images, until=self.stage)[self.stage])


def norm_kind(network: nn.Module) -> str:
    """Return ``layer`` when the network normalises with layer norm (GroupNorm of one group), else ``plain``."""
    return "layer" if any(isinstance(module, nn.GroupNorm) for module in network.modules()) else "plain"


def describe(name: str, network: nn.Module) -> tuple[dict[str, Any], nn.Module]:
    """Return a JSON-able description of an evaluation network and the module whose state dict is exported."""
    if isinstance(network, BranchFeatures):
        multi_exit = network.network
        if network.index == multi_exit.num_branches - 1:
            network = multi_exit.backbone
        else:
            stage = multi_exit.exit_names[network.index]
            spec = {"kind": "exit", "stage": stage, "exit_type": multi_exit.exit_type}
            module = ExitFeatures(multi_exit.backbone, stage, multi_exit.exits[stage])
            return {**spec, "norm": norm_kind(module), "feature_dim": multi_exit.backbone.feature_dim}, module
    if isinstance(network, ResNet):
        return {"kind": "resnet", "norm": norm_kind(network), "feature_dim": network.feature_dim}, network
    if isinstance(network, TimmBackbone):
        # The timm model itself: its state dict loads into timm.create_model(name, num_classes=0, **timm_kwargs).
        return {
            "kind": "timm",
            "timm_model": network.name,
            "norm": "plain",
            "feature_dim": network.feature_dim,
        }, network
    if isinstance(network, PatchGridEncoder):
        spec = {"kind": "patch_grid", "grid": network.grid, "norm": norm_kind(network)}
        return {**spec, "feature_dim": network.feature_dim}, network
    raise ExportError(f"evaluation network {name!r} is a {type(network).__name__}, which export cannot rebuild")


def torchvision_refusal(spec: dict[str, Any], network: nn.Module) -> str | None:
    """Return why a described network cannot load into torchvision's ResNet (None when it can)."""
    if spec["kind"] != "resnet":
        return f"the backbone is a {type(network).__name__} (a {spec['kind']} network), not a plain ResNet"
    if network.width != TORCHVISION_WIDTH:
        return f"model.width = {network.width}, torchvision's ResNet has width {TORCHVISION_WIDTH}"
    if spec["norm"] != "plain":
        return f"the backbone uses {spec['norm']} norm, torchvision's ResNet uses batch norm"
    return None


def torchvision_replacements(network: ResNet) -> dict[str, str]:
    """Return the torchvision modules to replace (by attribute name) before ``load_state_dict(strict=True)``."""
    replace = {"fc": "nn.Identity()"}
    if network.cifar_stem:
        replace.update({"conv1": CIFAR_CONV1, "maxpool": "nn.Identity()"})
    return replace


def check_format(export_format: str) -> None:
    """Return None if ``export_format`` is one this command writes; else raise ExportError naming it."""
    if export_format not in FORMATS:
        raise ExportError(f"--format {export_format!r} is not one of {', '.join(FORMATS)}")


def select_checkpoint(run_dir: Path, epoch: int | None) -> Path:
    """Return the checkpoint folder of ``epoch`` (default: the newest complete one); raise ExportError if unusable."""
    if epoch is None:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ExportError(f"run {run_dir} has no complete checkpoint")
        return checkpoint
    folder = run_dir / epoch_dir_name(epoch)
    if not folder.is_dir():
        saved = ", ".join(str(checkpoint_epoch(found)) for found in reversed(checkpoint_folders(run_dir))) or "none"
        raise ExportError(f"--epoch {epoch}: run {run_dir} has no checkpoint for that epoch (saved epochs: {saved})")
    reason = incomplete_reason(folder)
    if reason is not None:
        raise ExportError(f"--epoch {epoch}: checkpoint {folder} is unusable ({reason})")
    return folder


def source_metadata(run_dir: Path, checkpoint: Path, config: ExperimentConfig) -> dict[str, Any]:
    """Return the JSON-able block saying where the weights come from and what input they expect."""
    mean, std = normalization(config.data)
    return {
        "run": str(run_dir),
        "mlflow_run_id": read_run_id(run_dir),
        "checkpoint": checkpoint.name,
        "epoch": checkpoint_epoch(checkpoint),
        "epochs_planned": config.train.epochs,
        "method": config.method.name,
        "model": config.model.model_dump(mode="json"),
        "input": {"image_size": config.data.image_size, "mean": mean, "std": std},
    }


def export_run(run_dir: Path, export_format: str, epoch: int | None = None) -> dict[str, Any]:
    """Return the export payload (``metadata`` plus weights) of a run's checkpoint in ``export_format``."""
    check_format(export_format)
    config = load_run_config(run_dir)
    checkpoint = select_checkpoint(run_dir, epoch)
    networks = evaluation_networks(config, checkpoint, _ANY_NUM_CLASSES)
    metadata = {"format": export_format, **source_metadata(run_dir, checkpoint, config)}
    if export_format == "torchvision":
        spec, network = describe("backbone", networks["backbone"])
        refusal = torchvision_refusal(spec, network)
        if refusal is not None:
            raise ExportError(
                f"--format torchvision cannot express run {run_dir.name} ({config.method.name}): {refusal}; "
                "use --format state_dict"
            )
        metadata["networks"] = {"backbone": spec}
        # SelfCon's exits are no torchvision model; the command says so and points to state_dict.
        metadata["not_exported"] = [name for name in networks if name != "backbone"]
        metadata["torchvision"] = {"model": f"resnet{network.depth}", "replace": torchvision_replacements(network)}
        return {"metadata": metadata, "state_dict": network.state_dict()}
    if export_format == "timm":
        spec, network = describe("backbone", networks["backbone"])
        if not isinstance(network, TimmBackbone):
            raise ExportError(
                f"--format timm needs a run on a timm backbone (model.backbone: timm:<name>); run {run_dir.name} has "
                f"a {spec['kind']} network: use --format state_dict or torchvision"
            )
        metadata["networks"] = {"backbone": spec}
        metadata["not_exported"] = [name for name in networks if name != "backbone"]
        metadata["timm"] = {"model": network.name, "kwargs": network.create_kwargs}
        return {"metadata": metadata, "state_dict": network.model.state_dict()}
    described = {name: describe(name, network) for name, network in networks.items()}
    metadata["networks"] = {name: spec for name, (spec, _) in described.items()}
    return {"metadata": metadata, "networks": {name: module.state_dict() for name, (_, module) in described.items()}}


def _torchvision_model(metadata: dict[str, Any]) -> nn.Module:
    """Return torchvision's ResNet named in the metadata, with the modules it lists replaced."""
    import torchvision

    model = getattr(torchvision.models, metadata["torchvision"]["model"])(weights=None)
    model.fc = nn.Identity()
    if "conv1" in metadata["torchvision"]["replace"]:
        model.conv1 = nn.Conv2d(3, TORCHVISION_WIDTH, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _project_network(spec: dict[str, Any], model: ModelConfig, image_size: int) -> nn.Module:
    """Return a freshly built project network of the described kind (weights not yet loaded)."""
    backbone = build_backbone(model, norm=spec["norm"], image_size=image_size)
    if spec["kind"] in ("resnet", "timm"):
        return backbone
    if spec["kind"] == "patch_grid":
        return PatchGridEncoder(backbone, spec["grid"])
    stage = spec["stage"]
    if spec["exit_type"] == "fc":
        exit_module: nn.Module = FcExit(backbone.stage_channels[stage], backbone.feature_dim)
    else:
        exit_module = StageExit(backbone.stages_after(stage))
    return ExitFeatures(backbone, stage, exit_module)


def load_backbone(path: str | Path, network: str = "backbone") -> nn.Module:
    """Return the exported network ``network`` of an export file, weights loaded strictly, in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "metadata" not in payload:
        raise ValueError(f"{path} is not a file written by pipeline.export (no metadata block)")
    if network not in payload["metadata"]["networks"]:
        held = ", ".join(payload["metadata"]["networks"])
        raise ValueError(f"{path} holds no network {network!r}; it holds {held}")
    return rebuild(payload, network)


def run_network(run_dir: Path, network: str = "backbone") -> tuple[nn.Module, dict[str, Any]]:
    """Return a run's evaluation network at its newest checkpoint (rebuilt plain, eval mode) and its export metadata.

    The module is what ``--format state_dict`` followed by ``load_backbone`` gives, without writing the file.
    """
    payload = export_run(run_dir, "state_dict")
    return rebuild(payload, network), payload["metadata"]


def log_final_model(run: RunHandle, run_dir: Path, registered_name: str | None = None) -> str:
    """Return the URI of the run's MLflow model ``backbone``, logged from its newest checkpoint unless already there.

    A finished run reported again keeps the model it has; ``registered_name`` registers a newly logged one.
    """
    if logged_model_id(run, MODEL_NAME) is None:
        network, metadata = run_network(run_dir)
        size = metadata["input"]["image_size"]
        # Two images keep the batch dimension dynamic in the exported program; zeros are the mean image once normalised.
        example = np.zeros((2, 3, size, size), dtype=np.float32)
        log_model(run, network, example, MODEL_NAME, registered_name)
    return f"runs:/{run.run_id}/{MODEL_NAME}"


def rebuild(payload: dict[str, Any], network: str) -> nn.Module:
    """Return network ``network`` of an export payload as a module with its weights loaded strictly, in eval mode."""
    metadata = payload["metadata"]
    if metadata["format"] == "torchvision":
        module, state = _torchvision_model(metadata), payload["state_dict"]
    elif metadata["format"] == "timm":
        import timm

        options = metadata["timm"]
        module = timm.create_model(options["model"], pretrained=False, num_classes=0, **options["kwargs"])
        state = payload["state_dict"]
    else:
        model = ModelConfig.model_validate(metadata["model"])
        module = _project_network(metadata["networks"][network], model, metadata["input"]["image_size"])
        state = payload["networks"][network]
    module.load_state_dict(state, strict=True)
    return module.eval()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, export the run's weights to ``--out``; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder, or MLflow run id")
    parser.add_argument("--epoch", type=int, help="export checkpoint epoch_NNNN (default: the newest complete one)")
    parser.add_argument("--format", dest="export_format", required=True, help=" or ".join(FORMATS))
    parser.add_argument("--out", required=True, type=Path, help="file to write")
    parser.add_argument("--tracking-uri", help="MLflow store of an MLflow run id (default: as pretraining)")
    args = parser.parse_args(argv)
    try:
        # Before the run is resolved: a wrong format must not wait on an MLflow store lookup.
        check_format(args.export_format)
        payload = export_run(run_folder(args.run, args.tracking_uri), args.export_format, args.epoch)
    except (ConfigError, EvaluationError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, args.out)
    metadata = payload["metadata"]
    names = ", ".join(metadata["networks"])
    epochs = f"epoch {metadata['epoch']}/{metadata['epochs_planned']}"
    print(f"exported {names} of {metadata['run']} at {epochs} ({args.export_format}) to {args.out}")
    if args.export_format == "torchvision":
        replace = "; ".join(f"model.{key} = {value}" for key, value in metadata["torchvision"]["replace"].items())
        model = metadata["torchvision"]["model"]
        print(
            f"load: model = torchvision.models.{model}(); {replace}; "
            f"model.load_state_dict(torch.load({str(args.out)!r})['state_dict'])"
        )
        if metadata["not_exported"]:
            skipped = ", ".join(metadata["not_exported"])
            print(f"not exported: {skipped} (no torchvision model; --format state_dict exports them)")
    elif args.export_format == "timm":
        model, options = metadata["timm"]["model"], metadata["timm"]["kwargs"]
        keywords = "".join(f", {key}={value!r}" for key, value in options.items())
        print(
            f"load: model = timm.create_model({model!r}, num_classes=0{keywords}); "
            f"model.load_state_dict(torch.load({str(args.out)!r})['state_dict'])"
        )
    else:
        print(f"load: pipeline.load_backbone({str(args.out)!r}, network='backbone')  # networks: {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
