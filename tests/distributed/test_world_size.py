"""World-size invariance of every registered method: 2 gloo workers x B/2 images against 1 worker x B images.

Two optimisation steps (so the queue written by the first is read by the second) must give the same
loss (the mean over workers, what the loop logs) and the same parameters, momentum encoders and
queues, in float64 to 1e-10 relative, with batch norm in eval mode. A method registered later is
checked by registration alone. ``contrast_scope: worker`` (the official DDP code of SCL/DSCL and
HCSC) is the documented exception: it must differ at world size 2.
"""

from __future__ import annotations

import pytest
import torch.multiprocessing as mp

from pipeline.methods import get_method, method_names
from tests.support.invariance import StepResult, load_results, relative_error, run_steps, worker

WORLD = 2
TOLERANCE = 1e-10
# Every method the package and PIPELINE_PLUGINS register (spawned workers inherit the variable); the suite's own
# fixture methods (the interface probe, which records through a Ray actor) are not methods under test.
METHODS = [name for name in method_names() if not get_method(name).__module__.startswith("tests.")]
PER_WORKER = ("scl", "dscl", "hcsc")
WORKER_SCOPE = {"method.contrast_scope": "worker"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StepResult]:
    """Return every case's results on 2 gloo workers (one spawn for the whole registry)."""
    folder = tmp_path_factory.mktemp("world2")
    cases = {name: (name, {}) for name in METHODS}
    cases.update({f"{name}/worker": (name, WORKER_SCOPE) for name in PER_WORKER})
    mp.spawn(worker, args=(WORLD, cases, str(folder / "rendezvous"), str(folder)), nprocs=WORLD, join=True)
    return load_results(folder)


@pytest.mark.parametrize("name", METHODS)
def test_two_workers_match_one_worker_holding_the_whole_batch(name: str, two_workers: dict[str, StepResult]) -> None:
    reference = run_steps(name, rank=0, world=1)
    error = relative_error(reference, two_workers[name])
    assert error < TOLERANCE, f"{name}: relative error {error:.3g} at world size {WORLD}"


@pytest.mark.parametrize("name", PER_WORKER)
def test_per_worker_contrast_is_the_documented_difference(name: str, two_workers: dict[str, StepResult]) -> None:
    reference = run_steps(name, rank=0, world=1)
    assert relative_error(reference, run_steps(name, rank=0, world=1, **WORKER_SCOPE)) == 0.0
    assert relative_error(reference, two_workers[f"{name}/worker"]) > 1e-6
