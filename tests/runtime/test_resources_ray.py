"""Run-scoped actors start with the CPUs they declare even from inside a placement group, as in a sweep trial.

Tune starts each trial in a placement group that captures what the trial creates; the trial's own bundle holds
no CPU, so an actor left to the capture would be refused ("cannot fit into any bundles").
"""

from __future__ import annotations

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.methods.context import ActorSpec
from pipeline.runtime.resources import RunResources

pytestmark = pytest.mark.usefixtures("ray_session")


class Echo:
    """The smallest actor: answers a ping."""

    def ping(self) -> str:
        """Return ``pong``."""
        return "pong"


@ray.remote(num_cpus=0)
def start_one_actor() -> str:
    """Return the answer of a run actor with one CPU, created from inside whatever placement group runs this."""
    resources = RunResources({"echo": ActorSpec(Echo, num_cpus=1)}, "captured-run")
    try:
        return ray.get(resources.start()["echo"].ping.remote(), timeout=120)
    finally:
        resources.close()


def test_an_actor_with_a_cpu_starts_from_a_trial_like_placement_group() -> None:
    group = placement_group([{"memory": 2**20}])
    ray.get(group.ready(), timeout=60)
    try:
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        assert ray.get(start_one_actor.options(scheduling_strategy=strategy).remote(), timeout=180) == "pong"
    finally:
        remove_placement_group(group)
