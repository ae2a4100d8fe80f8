"""Config loading, overrides, round trip and every validation error path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    ExperimentConfig,
    apply_override,
    build_config,
    flatten,
    load_config,
    parse_value,
    to_yaml,
    with_overrides,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_official_moco_values() -> None:
    config = ExperimentConfig()
    assert config.method.name == "moco"
    assert config.method.temperature == 0.2
    assert config.method.queue_size == 65536
    assert config.method.momentum == 0.999
    assert config.eval.knn_k == 200 and config.eval.knn_temperature == 0.1


@pytest.mark.parametrize(
    "text,expected",
    [("3", 3), ("0.5", 0.5), ("true", True), ("[3000,2000,1000]", [3000, 2000, 1000]), ("abc", "abc"), ("null", None)],
)
def test_override_values_are_typed(text: str, expected: object) -> None:
    assert parse_value(text) == expected


def test_every_shipped_config_validates() -> None:
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML"
    for path in configs:
        load_config(path)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_config("quickstart.yaml", ["method.queue_size=2048", "model.width=8"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    again = load_config(path)
    assert again == config
    assert again.method.queue_size == 2048 and again.model.width == 8


def test_method_section_takes_the_registered_class_fields() -> None:
    config = load_config(None, ["method.name=supcon", "method.temperature=0.07"])
    assert type(config.method).__name__ == "SupConConfig"
    assert config.method.base_temperature == 0.07
    dumped = config.model_dump()
    assert dumped["method"]["base_temperature"] == 0.07


def test_with_overrides_switching_method_starts_from_its_defaults() -> None:
    config = with_overrides(load_config("quickstart.yaml"), {"method.name": "simclr", "method.temperature": 0.3})
    assert type(config.method).__name__ == "SimCLRConfig"
    assert config.method.temperature == 0.3 and config.method.base_temperature == 0.07


def test_with_overrides_and_flatten() -> None:
    config = with_overrides(ExperimentConfig(), {"method.queue_size": 4096, "train.epochs": 3})
    flat = flatten(config)
    assert flat["method.queue_size"] == 4096 and flat["train.epochs"] == 3
    assert "data.synthetic.num_train" in flat


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["data.colour=red"], "unknown key 'data.colour'"),
        (["nonsense.key=1"], "unknown key 'nonsense'"),
        (["train.epochs=zero"], "train.epochs = 'zero'"),
        (["train.epochs=0"], "train.epochs = 0: Input should be greater than or equal to 1"),
        (["model.backbone=vgg"], "model.backbone = 'vgg'"),
        (["data.image_size=8"], "data.image_size = 8"),
        (["method.name=nope"], "unknown method 'nope'"),
        (["method.temperature=-1"], "method.temperature = -1"),
        (["method.bogus=1"], "unknown key 'method.bogus'"),
        (["data.mean=[0.5,0.5]"], "needs 3 values"),
        (["train.amp=fp8"], "train.amp = 'fp8'"),
    ],
)
def test_bad_values_are_rejected_in_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    message = str(error.value)
    assert needle in message
    assert "\n" not in message


def test_bad_override_syntax_and_paths() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_override({}, "train.epochs")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"train": 3}, "train.epochs=1")
    with pytest.raises(ConfigError, match="config file not found: missing.yaml"):
        load_config("missing.yaml")


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"config file {path} is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"
    )
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_build_config_rejects_non_mapping_method() -> None:
    with pytest.raises(ConfigError, match="method"):
        build_config({"method": 3})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.pretrain", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_print_config_and_exit_code_2() -> None:
    shown = _cli("--config", "quickstart.yaml", "--set", "method.queue_size=2048", "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["method"]["queue_size"] == 2048
    bad = _cli("--config", "quickstart.yaml", "--set", "optim.lr=-3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: invalid config: optim.lr = -3")


def test_cli_missing_data_fails_before_any_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-cifar-here"
    bad = _cli(
        "--config",
        "quickstart.yaml",
        "--set",
        "data.source=cifar10",
        "--set",
        f"data.root={missing}",
        "--set",
        f"ray.storage_path={tmp_path / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert bad.returncode == 2, bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last and "data.download" in last
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def _modules_after_import(*modules: str) -> set[str]:
    """Return the module names a fresh interpreter holds after importing ``modules``."""
    code = f"import sys; import {', '.join(modules)}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_config_imports_neither_torch_nor_any_method() -> None:
    loaded = _modules_after_import("pipeline.config")
    assert not {name for name in loaded if name.split(".")[0] in ("torch", "torchvision", "ray", "mlflow")}
    # The registry is the one torch-free part of the methods package that config needs at import time.
    assert {name for name in loaded if name.startswith("pipeline.methods")} == {
        "pipeline.methods",
        "pipeline.methods.registry",
    }


def test_validating_a_method_config_loads_its_parameters_but_no_torch_and_no_method_class() -> None:
    code = (
        "import sys; from pipeline.config import load_config; load_config('configs/quickstart.yaml', "
        "['method.name=hcsc', 'method.hierarchy=[30, 20]']); print('\\n'.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "pipeline.methods.hcsc.params" in loaded and "pipeline.methods.moco.params" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("torch", "torchvision", "ray", "mlflow")}
    assert not {name for name in loaded if name.startswith("pipeline.methods.") and name.endswith(".method")}


def test_data_layer_imports_no_method() -> None:
    data_modules = sorted(f"pipeline.data.{path.stem}" for path in (ROOT / "pipeline" / "data").glob("*.py"))
    loaded = _modules_after_import(*data_modules)
    assert set(data_modules) <= loaded
    assert {name for name in loaded if name.startswith("pipeline.methods")} <= {
        "pipeline.methods",
        "pipeline.methods.registry",
    }


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ConfigError, match="train.epochs = True: must be a number, not a boolean"):
        load_config(None, ["train.epochs=true"])
    with pytest.raises(ConfigError, match="method.temperature = False"):
        load_config(None, ["method.temperature=false"])
    assert load_config(None, ["data.blur=true"]).data.blur is True


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="method: unknown method 'nope'; expected one of ") as error:
        load_config(None, ["method.name=nope"])
    known = str(error.value).split("expected one of ")[1].split(", ")
    assert {"moco", "simclr", "supcon"} <= set(known)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    assert load_config(path).method.name


def test_switching_method_on_the_command_line_starts_from_its_defaults() -> None:
    config = load_config("selfcon_synthetic.yaml", ["method.name=supcon", "method.temperature=0.2"])
    assert config.method.name == "supcon" and config.method.temperature == 0.2
    assert load_config("selfcon_synthetic.yaml", ["method.name=selfcon"]).method.variant == "M"


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "a\\b", "..", ".hidden", "", " ", "tab\there"])
def test_run_name_must_be_one_folder_name(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"ray": {"run_name": name}})
    message = str(error.value)
    assert message.startswith(f"invalid config: ray.run_name = {name!r}: must be one folder name")
    assert "\n" not in message


def test_run_name_accepts_plain_names() -> None:
    for name in ("moco-synthetic-1a2b3c4d", "trial_007", "a..b"):
        assert build_config({"ray": {"run_name": name}}).ray.run_name == name


def test_cli_refuses_an_escaping_run_name_in_one_line() -> None:
    bad = _cli("--config", "quickstart.yaml", "--set", "ray.run_name=../../escaped")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: invalid config: ray.run_name = '../../escaped': must be one folder name inside ray.storage_path: "
        "not empty, no '/' or '\\', not starting with '.'"
    ]
