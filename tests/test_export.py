"""pipeline.export and pipeline.load_backbone: exported weights give the project's features in torchvision and rebuilt.

Runs are written directly (config.yaml plus epoch_NNNN checkpoint folders of a tiny method): no Ray, no MLflow.
Measured max abs feature differences (CPU, float32, 2 images): 0.0 for every case below; asserted < 1e-5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

import pipeline
from pipeline.config import ModelConfig
from pipeline.export import describe, main, torchvision_refusal
from pipeline.methods import Method
from pipeline.models.backbones import build_backbone
from pipeline.training.checkpoints import epoch_dir_name, write_checkpoint, write_run_config
from tests.support.methods import make_method

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5
# Standard torchvision geometry: width 64, 7x7 stride-2 stem and max-pool; 32 px keeps it fast.
TORCHVISION_SIZE = {"model.width": 64, "model.cifar_stem": False, "data.image_size": 32}
TIMM_VIT = {
    "model.backbone": "timm:vit_tiny_patch16_224",
    "model.timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


def randomise_norms(module: nn.Module, seed: int = 1) -> None:
    """Give every norm layer random affine parameters and running statistics, so that an unloaded one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, (nn.BatchNorm2d, nn.GroupNorm)):
                child.weight.copy_(torch.rand(child.weight.shape, generator=generator) + 0.5)
                child.bias.copy_(torch.randn(child.bias.shape, generator=generator) * 0.1)
            if isinstance(child, nn.BatchNorm2d):
                child.running_mean.copy_(torch.randn(child.running_mean.shape, generator=generator) * 0.1)
                child.running_var.copy_(torch.rand(child.running_var.shape, generator=generator) + 0.5)


def save_epoch(run_dir: Path, method: Method, epoch: int) -> None:
    """Write a complete ``epoch_NNNN`` checkpoint folder holding the method's current state."""
    folder = run_dir / epoch_dir_name(epoch)
    folder.mkdir(parents=True)
    write_checkpoint(folder, {"epoch": epoch, "global_step": epoch, "method": method.state_dict(), "metrics": {}})


def write_run(tmp_path: Path, method_name: str, **overrides: object) -> tuple[Path, Method]:
    """Return a run folder holding a tiny method's config and epoch-1 checkpoint, and that method in eval mode."""
    method = make_method(method_name, 3, 16, **overrides)
    randomise_norms(method)
    run_dir = tmp_path / "run"
    write_run_config(run_dir, method.context.config)
    save_epoch(run_dir, method, 1)
    return run_dir, method.eval()


def images(size: int) -> torch.Tensor:
    """Return two fixed random images ``[2, 3, size, size]``."""
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def max_diff(first: torch.Tensor, second: torch.Tensor) -> float:
    """Return the largest absolute difference between two feature tensors of the same shape."""
    assert first.shape == second.shape
    return (first - second).abs().max().item()


def export(run_dir: Path, out: Path, export_format: str, *extra: str) -> dict:
    """Return the payload written by the command line (asserting exit 0)."""
    assert main(["--run", str(run_dir), "--format", export_format, "--out", str(out), *extra]) == 0
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize(
    ("method_name", "overrides"),
    [("supcon", {}), ("moco", {"method.queue_size": 64})],
    ids=["plain-bn", "split-bn"],
)
def test_torchvision_resnet18_gives_the_project_features_max_diff_0(
    tmp_path: Path, method_name: str, overrides: dict
) -> None:
    """Measured max abs diff 0.0 (plain BN and MoCo's split BN); the documented recipe: fc -> nn.Identity()."""
    run_dir, method = write_run(tmp_path, method_name, **TORCHVISION_SIZE, **overrides)
    payload = export(run_dir, tmp_path / "backbone.pt", "torchvision")
    assert payload["metadata"]["torchvision"] == {"model": "resnet18", "replace": {"fc": "nn.Identity()"}}
    json.dumps(payload["metadata"])
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(payload["state_dict"], strict=True)
    expected = method.evaluation_networks()["backbone"](images(32))
    assert max_diff(model.eval()(images(32)), expected) < TOLERANCE
    assert max_diff(pipeline.load_backbone(tmp_path / "backbone.pt")(images(32)), expected) < TOLERANCE


def test_torchvision_cifar_stem_loads_after_the_two_documented_replacements_max_diff_0(tmp_path: Path) -> None:
    """Measured max abs diff 0.0 after conv1 -> 3x3 stride-1 conv and maxpool -> nn.Identity() (and fc)."""
    run_dir, method = write_run(tmp_path, "supcon", **{**TORCHVISION_SIZE, "model.cifar_stem": True})
    payload = export(run_dir, tmp_path / "backbone.pt", "torchvision")
    assert payload["metadata"]["torchvision"]["replace"] == {
        "fc": "nn.Identity()",
        "conv1": "nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
        "maxpool": "nn.Identity()",
    }
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(payload["state_dict"], strict=True)
    expected = method.evaluation_networks()["backbone"](images(32))
    assert max_diff(model.eval()(images(32)), expected) < TOLERANCE
    assert max_diff(pipeline.load_backbone(tmp_path / "backbone.pt")(images(32)), expected) < TOLERANCE


@pytest.mark.parametrize("depth", [34, 50])
def test_deeper_resnets_load_into_torchvision_of_the_same_depth_max_diff_0(depth: int) -> None:
    """Measured max abs diff 0.0 for ResNet-34 and ResNet-50 (bottleneck) at width 64."""
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(backbone=f"resnet{depth}"), norm="plain")
    randomise_norms(backbone)
    spec, network = describe("backbone", backbone)
    assert torchvision_refusal(spec, network) is None
    model = getattr(torchvision.models, f"resnet{depth}")()
    model.fc = nn.Identity()
    model.load_state_dict(network.state_dict(), strict=True)
    assert max_diff(model.eval()(images(32)), backbone.eval()(images(32))) < TOLERANCE


def test_a_layer_norm_resnet_is_refused_for_torchvision() -> None:
    spec, network = describe("backbone", build_backbone(ModelConfig(), norm="layer"))
    assert spec["norm"] == "layer"
    assert torchvision_refusal(spec, network) == "the backbone uses layer norm, torchvision's ResNet uses batch norm"


def test_a_timm_backbone_is_refused_for_torchvision_and_its_state_dict_is_timm_s_own(tmp_path: Path) -> None:
    run_dir, method = write_run(tmp_path, "moco", **{"method.queue_size": 64, **TIMM_VIT})
    assert main(["--run", str(run_dir), "--format", "torchvision", "--out", str(tmp_path / "tv.pt")]) == 2
    payload = export(run_dir, tmp_path / "networks.pt", "state_dict")
    timm_model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, **TIMM_VIT["model.timm_kwargs"]
    )
    timm_model.load_state_dict(
        {key.removeprefix("model."): value for key, value in payload["networks"]["backbone"].items()}
    )
    expected = method.evaluation_networks()["backbone"](images(16))
    assert max_diff(timm_model.eval()(images(16)), expected) < TOLERANCE


def test_the_timm_format_loads_into_timm_as_the_command_says_and_refuses_other_backbones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, method = write_run(tmp_path, "moco", **{"method.queue_size": 64, **TIMM_VIT})
    payload = export(run_dir, tmp_path / "vit.pt", "timm")
    printed = capsys.readouterr().out
    options = payload["metadata"]["timm"]
    assert options == {"model": "vit_tiny_patch16_224", "kwargs": {**TIMM_VIT["model.timm_kwargs"], "img_size": 16}}
    assert "load: model = timm.create_model('vit_tiny_patch16_224', num_classes=0, patch_size=8" in printed
    timm_model = timm.create_model(options["model"], pretrained=False, num_classes=0, **options["kwargs"])
    timm_model.load_state_dict(payload["state_dict"], strict=True)
    expected = method.evaluation_networks()["backbone"](images(16))
    assert max_diff(timm_model.eval()(images(16)), expected) < TOLERANCE
    assert max_diff(pipeline.load_backbone(tmp_path / "vit.pt")(images(16)), expected) < TOLERANCE

    resnet_dir, _ = write_run(tmp_path / "resnet", "moco", **{"method.queue_size": 64})
    assert main(["--run", str(resnet_dir), "--format", "timm", "--out", str(tmp_path / "no.pt")]) == 2
    assert "--format timm needs a run on a timm backbone" in capsys.readouterr().err
    assert not (tmp_path / "no.pt").exists()


def test_selfcon_torchvision_export_is_the_backbone_and_names_the_exits_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, method = write_run(tmp_path, "selfcon", **TORCHVISION_SIZE)
    payload = export(run_dir, tmp_path / "backbone.pt", "torchvision")
    assert "not exported: exit_layer2 (no torchvision model" in capsys.readouterr().out
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(payload["state_dict"], strict=True)
    assert max_diff(model.eval()(images(32)), method.evaluation_networks()["backbone"](images(32))) < TOLERANCE


@pytest.mark.parametrize(
    ("method_name", "overrides", "kinds"),
    [
        ("supcon", {}, {"backbone": ("resnet", "plain")}),
        ("moco", {"method.queue_size": 64}, {"backbone": ("resnet", "plain")}),
        ("moco", {"method.queue_size": 64, **TIMM_VIT}, {"backbone": ("timm", "plain")}),
        ("cpc", {"method.grid": 3, "method.skip_steps": 0, "method.steps": 2}, {"backbone": ("patch_grid", "layer")}),
        ("selfcon", {}, {"backbone": ("resnet", "plain"), "exit_layer2": ("exit", "plain")}),
        (
            "selfcon",
            {"method.exit_type": "same", "method.exits": ["layer1", "layer3"]},
            {"backbone": ("resnet", "plain"), "exit_layer1": ("exit", "plain"), "exit_layer3": ("exit", "plain")},
        ),
    ],
    ids=[
        "resnet-plain-bn",
        "resnet-split-bn",
        "timm-vit",
        "cpc-layer-norm-patch-grid",
        "selfcon-fc-exit",
        "selfcon-stage-exits",
    ],
)
def test_load_backbone_rebuilds_every_evaluation_network_max_diff_0(
    tmp_path: Path, method_name: str, overrides: dict, kinds: dict
) -> None:
    """Measured max abs diff 0.0 for each network; the rebuilt module is in eval mode."""
    run_dir, method = write_run(tmp_path, method_name, **overrides)
    payload = export(run_dir, tmp_path / "networks.pt", "state_dict")
    metadata = payload["metadata"]
    assert {name: (spec["kind"], spec["norm"]) for name, spec in metadata["networks"].items()} == kinds
    assert metadata["method"] == method_name and metadata["epoch"] == 1
    json.dumps(metadata)
    for name, network in method.evaluation_networks().items():
        loaded = pipeline.load_backbone(tmp_path / "networks.pt", name)
        assert not loaded.training
        assert max_diff(loaded(images(16)), network(images(16))) < TOLERANCE
    with pytest.raises(ValueError, match="holds no network 'exit_layer4'"):
        pipeline.load_backbone(tmp_path / "networks.pt", "exit_layer4")


def test_epoch_picks_that_checkpoint_and_the_default_is_the_newest(tmp_path: Path) -> None:
    run_dir, method = write_run(tmp_path, "supcon")
    first = method.evaluation_networks()["backbone"](images(16))
    randomise_norms(method, seed=3)
    save_epoch(run_dir, method, 2)
    second = method.evaluation_networks()["backbone"](images(16))
    assert max_diff(first, second) > 1e-2
    for extra, epoch, expected in [(("--epoch", "1"), 1, first), ((), 2, second)]:
        payload = export(run_dir, tmp_path / f"epoch{epoch}.pt", "state_dict", *extra)
        assert payload["metadata"]["epoch"] == epoch
        loaded = pipeline.load_backbone(tmp_path / f"epoch{epoch}.pt")
        assert max_diff(loaded(images(16)), expected) < TOLERANCE


def test_unknown_format_is_one_line_and_exit_2_from_the_command_line(tmp_path: Path) -> None:
    run_dir, _ = write_run(tmp_path, "supcon")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.export", "--run", str(run_dir), "--format", "onnx", "--out", "x.pt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --format 'onnx' is not one of torchvision, timm, state_dict"]


def another_methods_checkpoint(run_dir: Path) -> None:
    """Add a newer checkpoint holding a MoCo method while the run's config names SupCon."""
    save_epoch(run_dir, make_method("moco", 3, 16, **{"method.queue_size": 64}), 2)


@pytest.mark.parametrize(
    ("method_name", "arguments", "damage", "message"),
    [
        ("supcon", ["--run", "{tmp}/nowhere"], None, "no run folder at {tmp}/nowhere"),
        (
            "supcon",
            ["--epoch", "5"],
            None,
            "--epoch 5: run {tmp}/run has no checkpoint for that epoch (saved epochs: 1)",
        ),
        ("supcon", ["--format", "torchvision"], None, "model.width = 4, torchvision's ResNet has width 64"),
        ("cpc", ["--format", "torchvision"], None, "the backbone is a PatchGridEncoder (a patch_grid network)"),
        ("supcon", [], another_methods_checkpoint, "does not hold a supcon method"),
        (
            "supcon",
            ["--epoch", "1"],
            lambda run_dir: (run_dir / epoch_dir_name(1) / "manifest.json").unlink(),
            "--epoch 1: checkpoint {tmp}/run/epoch_0001 is unusable (no manifest.json)",
        ),
    ],
    ids=["missing-run", "epoch-without-checkpoint", "width-4-torchvision", "cpc-torchvision", "other-method", "torn"],
)
def test_refusals_are_one_line_naming_the_value_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method_name: str,
    arguments: list[str],
    damage: object,
    message: str,
) -> None:
    run_dir, _ = write_run(tmp_path, method_name)
    if damage is not None:
        damage(run_dir)
    given = {"--run": str(run_dir), "--format": "state_dict", "--out": str(tmp_path / "out.pt")}
    given.update(dict(zip(arguments[::2], (value.format(tmp=tmp_path) for value in arguments[1::2]), strict=True)))
    assert main([item for pair in given.items() for item in pair]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], lines
    if "torchvision" in arguments:
        assert lines[0].endswith("use --format state_dict")
    assert not (tmp_path / "out.pt").exists()
