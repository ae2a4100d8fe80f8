"""cluster.yaml (AWS) and cluster-gcp.yaml validate against Ray's own schema and config preparation (offline)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILES = ("cluster.yaml", "cluster-gcp.yaml")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_ray_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_load(name))
    validate_config(prepared)
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    assert "--shm-size=32g" in prepared["docker"]["run_options"]
    setup = " ".join(prepared["setup_commands"])
    assert 'contrastive-pipeline[gpu]"' in setup and "faiss-gpu" in setup, "the project with its gpu extra"
    assert "mlflow server" in " ".join(prepared["head_setup_commands"])
    for commands in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        assert "MLFLOW_TRACKING_URI=http://" in " ".join(commands), "jobs and workers get the head's MLflow"
    assert any("/mnt/shared" in command for command in prepared["initialization_commands"]), "shared storage"


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_schema_check_is_not_vacuous(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(_load(name))
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))
    misspelt = copy.deepcopy(_load(name))
    misspelt["available_node_types"]["gpu_worker"]["max_worker"] = 4
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(misspelt))
