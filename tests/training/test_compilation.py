"""train.compile: which networks every method compiles, the eager fallback, and checkpoints across the switch.

torch.compile with inductor takes about a minute per ResNet-18 on a 2-core CPU (the graph's size, not its
width, sets the time), so only ``test_compiled_step_matches_eager`` compiles with inductor, and on a
three-layer network; the fallback tests make a dynamo backend fail (tracing only, about a second each).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.methods import Batch, Method, MethodContext, StepInfo, build_method, get_method, method_names
from pipeline.training.compilation import compile_networks
from pipeline.training.optim import build_optimizer
from pipeline.training.step import train_step
from tests.support.invariance import NUM_CLASSES, global_batch, install_prototypes, invariance_config


def build(name: str, seed: int = 0) -> tuple[Method, Batch]:
    """Return method ``name`` at the invariance harness's tiny size, in float64, and one batch of its views."""
    config = invariance_config(name)
    torch.manual_seed(seed)
    method = build_method(config, NUM_CLASSES).double()
    if name == "hcsc":
        install_prototypes(method)
    return method, global_batch(get_method(name), config)


def run_steps(method: Method, batch: Batch, steps: int) -> list[float]:
    """Return the losses of ``steps`` SGD steps of ``method`` on ``batch``."""
    optimizer = build_optimizer(method.context.config.optim, method)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for index in range(steps):
        torch.manual_seed(100 + index)
        values = train_step(method, method, optimizer, scaler, batch, StepInfo(0, index, steps), 0.1, None)
        losses.append(float(values["loss"]))
    return losses


# The project's own methods: test plugins (tests.support.probe_method) register themselves when another test module
# imports them, and need Ray actors this test does not create.
PROJECT_METHODS = [name for name in method_names() if get_method(name).__module__.startswith("pipeline.")]


@pytest.mark.parametrize("name", PROJECT_METHODS)
def test_each_method_compiles_trainable_networks_its_forward_calls(name: str) -> None:
    method, batch = build(name)
    networks = method.compiled_networks()
    assert networks, f"{name} compiles nothing"
    called: set[int] = set()
    for network in networks:
        network.register_forward_hook(lambda module, args, output: called.add(id(module)))
    method(batch, StepInfo(0, 0, 4))
    # A network reached only through another of its methods (forward_stages) would compile for nothing.
    assert called == {id(network) for network in networks}
    compiled = {id(parameter) for network in networks for parameter in network.parameters()}
    trainable = [parameter for parameter in method.parameters() if parameter.requires_grad]
    assert all(parameter.requires_grad for network in networks for parameter in network.parameters())
    assert len(compiled) == sum(1 for network in networks for _ in network.parameters()), "networks overlap"
    covered = sum(p.numel() for p in trainable if id(p) in compiled) / sum(p.numel() for p in trainable)
    assert covered > 0.99, f"{name}: compiled networks hold {covered:.1%} of the trainable weights"


def test_compiled_checkpoints_load_into_eager_methods_and_back() -> None:
    compiled, _ = build("moco")
    eager, _ = build("moco", seed=1)
    assert compile_networks(compiled, True)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    eager.load_state_dict(compiled.state_dict())
    compiled.load_state_dict(build("moco", seed=2)[0].state_dict())
    torch.testing.assert_close(compiled.state_dict(), build("moco", seed=2)[0].state_dict())


class TinyMethod(Method):
    """A three-layer contrastive method: small enough for inductor to compile in seconds."""

    name = "tiny"

    def __init__(self, context: MethodContext) -> None:
        nn.Module.__init__(self)
        self.context = context
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, 4)

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return no views (the tests hand the batch in)."""
        return {}

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the encoder."""
        return {"backbone": self.encoder}

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return an InfoNCE loss between the two views ``# logits [B, B]``."""
        first, second = (nn.functional.normalize(self.head(self.encoder(view)), dim=1) for view in batch.views.values())
        loss = nn.functional.cross_entropy(first @ second.T / 0.1, torch.arange(first.shape[0]))
        return {"loss": loss}


def tiny(seed: int = 0) -> tuple[Method, Batch]:
    """Return a seeded TinyMethod and a batch of two random 8 px views of 6 images."""
    torch.manual_seed(seed)
    config = invariance_config("simclr")
    method = TinyMethod(MethodContext(config, 0, 1, NUM_CLASSES, "plain"))
    views = {"a": torch.randn(6, 3, 8, 8), "b": torch.randn(6, 3, 8, 8)}
    return method, Batch(views=views, labels=torch.zeros(6, dtype=torch.long), indices=torch.arange(6))


def test_compiled_step_matches_eager(capsys: pytest.CaptureFixture[str]) -> None:
    eager, batch = tiny()
    compiled, _ = tiny()
    assert [network for network in compiled.compiled_networks()] == [compiled.encoder, compiled.head]
    assert compile_networks(compiled, True) == [compiled.encoder, compiled.head]
    expected, got = run_steps(eager, batch, 3), run_steps(compiled, batch, 3)
    assert "warning" not in capsys.readouterr().err
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.state_dict(), eager.state_dict(), rtol=1e-4, atol=1e-5)


def failing_compiler(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
    """A compiler that fails the way a missing C++ toolchain does."""
    raise RuntimeError("no working C++ compiler found\nsecond line of the compiler's report")


@pytest.mark.parametrize(
    "backend",
    [failing_compiler, aot_autograd(fw_compiler=lambda graph, inputs: graph.forward, bw_compiler=failing_compiler)],
    ids=["forward", "backward"],
)
def test_failed_compilation_warns_once_and_trains_eager(
    backend: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The backward graph is lowered lazily, so its failure surfaces in the first step's backward pass.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    eager, batch = build("moco")
    compiled, _ = build("moco")
    assert compile_networks(compiled, True)
    expected, got = run_steps(eager, batch, 2), run_steps(compiled, batch, 2)
    lines = [line for line in capsys.readouterr().err.splitlines() if "train.compile" in line]
    assert len(lines) == 1 and "no working C++ compiler found" in lines[0], lines
    assert got == expected
    torch.testing.assert_close(compiled.state_dict(), eager.state_dict(), rtol=0, atol=0)
    assert all(network._compiled_call_impl is None for network in compiled.compiled_networks())


def test_compile_refused_at_build_warns_and_stays_eager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    method, _ = build("simclr")
    assert compile_networks(method, True) == []
    assert compile_networks(method, False) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not supported on this Python" in err[0]
    assert all(network._compiled_call_impl is None for network in method.compiled_networks())
