"""``train.compile``: torch.compile a method's trainable networks in place, falling back to eager when it fails.

Each network of ``Method.compiled_networks`` is compiled with ``nn.Module.compile`` (in place), so parameter
names, ``state_dict`` keys and checkpoints are those of the eager networks: a compiled run's checkpoint loads
into an eager run and back. Momentum encoders, queues, all-gathers and the methods' Python logic stay eager.
torch.compile compiles lazily, so a failure (no C++ compiler, no Triton, an unsupported op) surfaces in the
first step's forward or, since the backward graph is lowered lazily, in its backward: the first step after
``compile_networks`` therefore runs under a guard that restores the method's state and RNG, turns every
network back to eager, reruns the step and prints one warning line naming the reason.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import torch
from torch import nn

from pipeline.methods.base import Method

Result = TypeVar("Result")

# Methods whose first compiled step has not run yet, with the networks compiled in them.
_UNTRIED: WeakKeyDictionary[nn.Module, list[nn.Module]] = WeakKeyDictionary()


def _warn(error: BaseException) -> None:
    """Print the one warning line of a failed compilation, naming its root cause."""
    cause = error
    # Dynamo wraps the backend's error (BackendCompilerFailed.inner_exception); the reason is the innermost one.
    while (inner := cause.__cause__ or getattr(cause, "inner_exception", None)) is not None:
        cause = inner
    first_line = (str(cause).strip().splitlines() or [""])[0][:300]
    print(
        f"warning: train.compile: torch.compile failed, training eager ({type(cause).__name__}: {first_line})",
        file=sys.stderr,
        flush=True,
    )


def _make_eager(networks: list[nn.Module]) -> None:
    """Turn networks compiled by ``nn.Module.compile`` back to eager calls."""
    for network in networks:
        # nn.Module.compile stores the compiled call here and has no public inverse.
        network._compiled_call_impl = None


def compile_networks(method: Method, enabled: bool) -> list[nn.Module]:
    """Return the networks of ``method`` compiled in place (none when ``enabled`` is off or compile is unavailable)."""
    if not enabled:
        return []
    networks = method.compiled_networks()
    try:
        for network in networks:
            network.compile()
    except Exception as error:  # torch.compile refuses this platform or Python version: stay eager
        _make_eager(networks)
        _warn(error)
        return []
    _UNTRIED[method] = networks
    return networks


def _rng_states() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return torch's CPU and (when initialised) CUDA random states."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


def first_step_guard(method: nn.Module, run_step: Callable[[], Result]) -> Result:
    """Return ``run_step()``; the first step after ``compile_networks`` falls back to eager if compilation fails.

    On a failure the method's state (weights, buffers, queues) and torch's RNG are restored as they were
    before the step, every compiled network turns eager, the step runs again and one warning line names the
    reason. An error the eager rerun repeats is the step's own and is raised.
    """
    networks = _UNTRIED.pop(method, None)
    if networks is None:
        return run_step()
    state: dict[str, Any] = copy.deepcopy(method.state_dict())
    cpu_rng, cuda_rng = _rng_states()
    try:
        return run_step()
    except Exception as error:
        _make_eager(networks)
        method.load_state_dict(state)
        torch.set_rng_state(cpu_rng)
        if cuda_rng:
            torch.cuda.set_rng_state_all(cuda_rng)
        result = run_step()
        _warn(error)
        return result
