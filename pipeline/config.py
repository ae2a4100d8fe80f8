"""Typed experiment configuration: YAML loading, dotted overrides and validation.

Every hyperparameter lives here with the official default. Method-specific parameters
live in torch-free classes in each method family's ``params.py`` (``pipeline.methods.<family>``),
found by ``pipeline.methods.registry`` and selected by ``method.name``. This module imports neither
torch nor any method class, so a config error is reported in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from pipeline.methods.registry import MethodConfig, method_config_class
from pipeline.section import Section

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, described in one line naming the key and value."""


class SyntheticConfig(Section):
    """The procedural shapes data set (no files on disk)."""

    num_train: int = Field(5000, ge=1)
    num_test: int = Field(1000, ge=1)
    num_superclasses: int = Field(4, ge=1, le=64)
    classes_per_superclass: int = Field(5, ge=1, le=64)


class DataConfig(Section):
    """Where the images come from and how they are read."""

    source: Literal["synthetic", "cifar10", "cifar100", "stl10", "image_folder", "list_file", "parquet"] = "synthetic"
    root: str | None = None
    train_list: str | None = None
    test_list: str | None = None
    train_dir: str = "train"
    test_dir: str = "val"
    stl10_unlabeled: bool = False
    download: bool = False
    image_size: int = Field(32, ge=16, le=512)
    long_tail_ratio: float | None = Field(None, ge=1.0)
    skip_corrupt: bool = False
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    blur: bool | None = None
    # Where training views are made: per image with PIL in the loader workers (the reference), or per batch on the
    # training device, the loader then handing over fixed-size uint8 images (pipeline.data.batched_views).
    augment_on: Literal["loader", "device"] = "loader"
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("mean", "std")
    @classmethod
    def _three_channels(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) != 3:
            raise ValueError(f"needs 3 values (one per RGB channel), got {len(value)}")
        return value


RESNETS = ("resnet18", "resnet34", "resnet50")
TIMM_PREFIX = "timm:"


class ModelConfig(Section):
    """Backbone, normalisation and projection head.

    ``backbone`` is one of the built-in ResNets (``cifar_stem`` and ``width`` apply to them) or any timm model
    by name, ``timm:<name>`` (e.g. ``timm:vit_tiny_patch16_224``), built without pretrained weights and without
    its classifier; ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``patch_size``, ``embed_dim``, ``depth``).
    """

    backbone: str = "resnet18"
    cifar_stem: bool = False
    width: int = Field(64, ge=4, le=256)
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_norm: Literal["auto", "plain", "split", "sync", "shuffle"] = "auto"
    bn_splits: int = Field(8, ge=1)
    proj_hidden_dim: int | None = Field(None, ge=1)
    proj_dim: int = Field(128, ge=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in RESNETS and not (value.startswith(TIMM_PREFIX) and value.removeprefix(TIMM_PREFIX)):
            raise ValueError(f"must be one of {', '.join(RESNETS)} or timm:<model name>, got {value!r}")
        return value

    @model_validator(mode="after")
    def _timm_kwargs_need_timm(self) -> ModelConfig:
        if self.timm_kwargs and not self.uses_timm:
            raise ValueError(f"timm_kwargs apply to a timm backbone (timm:<name>), not to {self.backbone!r}")
        return self

    @property
    def uses_timm(self) -> bool:
        """Return whether the backbone is a timm model."""
        return self.backbone.startswith(TIMM_PREFIX)


class OptimConfig(Section):
    """Optimiser and learning-rate schedule (stepped every iteration)."""

    name: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = Field(0.03, gt=0)
    lr_batch_reference: int = Field(256, ge=1)
    scale_lr: bool = True
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    # LARS: the layer-wise trust ratio's coefficient (SimCLR's and BYOL's 0.001).
    trust_coefficient: float = Field(0.001, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Section):
    """Epochs, batch and numerics."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    # auto: bf16 autocast on a CUDA device, off on CPU (pipeline.training.step.autocast_dtype resolves it).
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    # torch.compile of the method's trainable networks (pipeline.training.compilation); eager, one warning, on failure.
    compile: bool = False
    log_every_steps: int = Field(50, ge=1)
    inject_failure_at_epoch: int | None = Field(None, ge=0)

    @field_validator("amp", mode="before")
    @classmethod
    def _off_is_a_word(cls, value: Any) -> Any:
        """Return ``off`` for YAML's false: an unquoted ``off`` in a file or ``--set`` parses as a boolean."""
        return "off" if value is False else value


class AugmentedProbeConfig(Section):
    """The papers' linear protocol (MoCo's defaults): crops and flips through the frozen backbone every epoch."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(30.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[int] = [60, 80]
    crop_scale: list[float] = [0.08, 1.0]

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"needs [low, high] with 0 < low <= high <= 1, got {value}")
        return value


class LinearEvalConfig(Section):
    """Linear probe on frozen features (``python -m pipeline.evaluate``; after pretraining when ``enabled``)."""

    enabled: bool = False
    protocol: Literal["features", "augmented"] = "features"
    optimizer: Literal["sgd", "lbfgs"] = "sgd"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    sampling: Literal["auto", "uniform", "class_balanced"] = "auto"
    loss_weighting: Literal["none", "inverse_frequency"] = "none"
    flip_average: bool = False
    baselines: bool = False
    many_threshold: float = Field(100, ge=0)
    few_threshold: float = Field(20, ge=0)
    scale_thresholds: bool = True
    seed: int = 0
    augmented: AugmentedProbeConfig = AugmentedProbeConfig()


class OnlineProbeConfig(Section):
    """A linear head trained during pretraining on detached features of the un-augmented view (``online/top1``)."""

    # auto: on when the training set has labelled images (pipeline.evaluation.online_probe).
    enabled: bool | Literal["auto"] = "auto"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class EvalConfig(Section):
    """Per-epoch kNN monitor, online probe, baselines and the linear evaluation stage."""

    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.1, gt=0)
    knn_every: int = Field(1, ge=1)
    online_probe: OnlineProbeConfig = OnlineProbeConfig()
    # At the end of a run: the test embeddings' 2-D map, and HCSC's prototype hierarchy (pipeline.evaluation.pictures).
    pictures: bool = True
    # With pictures on, the map also every N epochs during training (0: at the end only).
    pictures_every: int = Field(0, ge=0)
    pixel_baseline: bool = True
    linear: LinearEvalConfig = LinearEvalConfig()


class RayConfig(Section):
    """Workers, placement, fault tolerance and where checkpoints are stored."""

    address: str | None = None
    num_workers: int = Field(1, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(0, ge=-1)
    storage_path: str = "runs"
    run_name: str | None = None
    resume: Literal["auto", "never", "must"] = "auto"
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory: int | None = Field(None, ge=78643200)

    @field_validator("run_name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        # The name becomes a folder under storage_path: '..' or a separator would put the run somewhere else.
        if value is not None and (
            not value.strip()
            or value.startswith(".")
            or any(separator in value for separator in "/\\")
            or not value.isprintable()
        ):
            raise ValueError(
                "must be one folder name inside ray.storage_path: not empty, no '/' or '\\', not starting with '.'"
            )
        return value


class TrackingConfig(Section):
    """MLflow: where runs are recorded and what happens when the store is unreachable."""

    uri: str | None = None
    experiment: str = "contrastive"
    run_name: str | None = None
    fallback_uri: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = {}
    # The final backbone is logged as the run's MLflow model ``backbone`` (about 1-3 s and the network's size per
    # run; false skips it, ``pipeline.export`` still writes the weights); a name also registers it.
    log_model: bool = True
    register_model: str | None = Field(None, min_length=1)


class ExperimentConfig(Section):
    """One experiment: everything a pretraining run needs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: SerializeAsAny[MethodConfig] = Field(default={"name": "moco"}, validate_default=True)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("method", mode="before")
    @classmethod
    def _method_params(cls, value: Any) -> MethodConfig:
        if isinstance(value, MethodConfig):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError("must be a mapping with at least 'name'")
        params = dict(value)
        config_class = method_config_class(str(params.get("name", "moco")))
        return config_class(**params)


def _format_error(error: ValidationError) -> str:
    """Return one line naming each offending key, its value and what is allowed."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
            continue
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        parts.append(f"{key}{shown}: {message}")
    return "invalid config: " + "; ".join(parts)


def yaml_problem(error: yaml.YAMLError) -> str:
    """Return a YAML parse error as one line: what is wrong and where (PyYAML's own text quotes the source)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse_value(text: str) -> Any:
    """Return a typed value from an override's text (YAML scalars and flow lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse override value {text!r}: {exc.problem}") from None


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``value`` at ``section.key`` (any depth) inside a raw config mapping."""
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {dotted!r} names no key")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override key '{'.'.join(keys[: depth + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` command-line override to a raw config mapping.

    Switching ``method.name`` drops the previous method's parameters: the new method starts from its
    own defaults (later ``method.*`` overrides still apply).
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, text = assignment.split("=", 1)
    value = parse_value(text)
    method = raw.get("method")
    if dotted.strip() == "method.name" and isinstance(method, dict) and method.get("name", value) != value:
        raw["method"] = {}
    set_dotted(raw, dotted, value)


def load_raw(path: str | Path) -> dict[str, Any]:
    """Return the mapping stored in a YAML config file."""
    candidate = Path(path)
    if not candidate.exists() and not candidate.is_absolute() and (CONFIG_DIR / candidate).exists():
        candidate = CONFIG_DIR / candidate
    if not candidate.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(candidate.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {candidate} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {candidate} must hold a mapping of sections")
    return raw


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Return the validated config for a raw mapping, or raise ConfigError in one line."""
    try:
        return ExperimentConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Return the validated config from a YAML file (or defaults) plus dotted overrides."""
    raw = load_raw(path) if path is not None else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_config(raw)


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Return a new validated config with ``{dotted.key: value}`` applied to ``config``."""
    raw = config.model_dump()
    new_method = overrides.get("method.name", raw["method"]["name"])
    if new_method != raw["method"]["name"]:
        # The resolved parameters belong to the old method; the new one starts from its own defaults.
        raw["method"] = {"name": new_method}
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    return build_config(raw)


def to_yaml(config: ExperimentConfig) -> str:
    """Return the resolved config as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(config: ExperimentConfig) -> dict[str, Any]:
    """Return ``{section.key: value}`` for every leaf of the config (for MLflow params)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = node

    walk("", config.model_dump(mode="json"))
    return flat


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and ``--print-config`` to a command-line parser."""
    parser.add_argument("--config", help="YAML experiment config (path, or a name in configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value; repeatable (lists as [3000,2000,1000])",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Return the validated config named by parsed arguments; exit 2 with one line if invalid."""
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print_config:
        print(to_yaml(config), end="")
        raise SystemExit(0)
    return config
