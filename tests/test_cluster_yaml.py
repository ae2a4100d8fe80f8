"""cluster.yaml validates against Ray's own schema and config preparation (offline; no cloud calls)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_load())
    validate_config(prepared)
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    assert any("g5" in t["node_config"]["InstanceType"] for t in node_types.values())
    assert "--shm-size=32g" in prepared["docker"]["run_options"]


def test_schema_check_is_not_vacuous() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(_load())
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))
