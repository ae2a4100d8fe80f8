"""Ablation grid files: a base config, axes of dotted keys, seeds, the metric and evaluation; expanded into trials.

A grid file (YAML, in ``tuning/grids/``)::

    name: ascl_k_mode
    description: ASCL's K against the target mode (the paper's Table 6)
    metric: knn/top1            # what the report ranks by (a final pretraining or evaluation metric)
    mode: max
    evaluation: knn             # knn: the per-epoch monitor only; linear: the linear stage after each trial
    search: grid                # grid: every trial to the end (ablation); asha: early stopping (tuning)
    asha: {grace_period: 1, reduction_factor: 2}   # epochs before the first cut, and the cut's ratio
    full:                       # the paper-size form
      base: ascl_cifar10.yaml   # a config (path, or a name in configs/)
      set: {train.epochs: 200}  # overrides on the base for every trial
      axes:                     # dotted key -> values; the trials are the product of all axes
        method.num_neighbors: [0, 1, 2, 5, 10]
      zip:                      # groups of keys whose values move together (one axis each); null: not set
        - {method.name: [dscl, dscl, scl], method.alpha: [0.1, 0.5, null]}
      seeds: [0]
      resources: {num_workers: 1, cpus_per_worker: 4, gpus_per_worker: 0.5}
    quick:                      # the laptop form: any key left out is the full form's
      base: ascl_synthetic.yaml
      set: {train.epochs: 2}

A ``null`` axis value leaves its key unset for that trial (the base's value, or the method's default
after a ``method.name`` change), so trials of different methods can share a zipped group. Every
trial's config is built and validated before anything runs; a bad key or value names the grid file,
the axis and the value. ``search: asha`` stops the weaker trials early (ASHA, rungs in epochs) on a
metric logged every epoch (``knn/...`` or ``train/...``); it is for tuning, not for ablation tables.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.config import ConfigError, ExperimentConfig, load_config, with_overrides, yaml_problem
from pipeline.section import Section

GRID_DIR = Path(__file__).resolve().parent / "grids"


class GridError(ValueError):
    """A grid file that cannot run; the message names the file, the axis and the value."""


class TrialResources(Section):
    """Workers per trial and what each reserves (fractional GPUs let small trials share one)."""

    num_workers: int | None = Field(None, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)

    def overrides(self) -> dict[str, Any]:
        """Return the ``ray.*`` overrides these resources stand for."""
        return {f"ray.{key}": value for key, value in self.model_dump().items() if value is not None}


class GridForm(Section):
    """One form of a grid (full or quick): base config, fixed overrides, axes, zipped axes, seeds, resources."""

    base: str
    set: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: TrialResources = TrialResources()


class QuickForm(Section):
    """The quick form: every key it leaves out is taken from the full form."""

    base: str | None = None
    set: dict[str, Any] | None = None
    axes: dict[str, list[Any]] | None = None
    zip: list[dict[str, list[Any]]] | None = None
    seeds: list[int] | None = Field(None, min_length=1)
    resources: TrialResources | None = None


class AshaSpec(Section):
    """ASHA's settings: epochs every trial trains before the first cut, and the cut's ratio (keep 1 in ``r``)."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


PER_EPOCH_PREFIXES = ("knn/", "train/")


class GridSpec(Section):
    """A grid file's contents."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    metric: str = "knn/top1"
    mode: Literal["max", "min"] = "max"
    evaluation: Literal["knn", "linear"] = "knn"
    search: Literal["grid", "asha"] = "grid"
    asha: AshaSpec = AshaSpec()
    full: GridForm
    quick: QuickForm = QuickForm()

    @model_validator(mode="after")
    def _asha_needs_a_per_epoch_metric(self) -> GridSpec:
        if self.search == "asha" and not self.metric.startswith(PER_EPOCH_PREFIXES):
            raise ValueError(
                f"search: asha stops trials on a metric logged every epoch ({', '.join(PER_EPOCH_PREFIXES)}...), "
                f"got metric {self.metric!r}"
            )
        return self

    def form(self, quick: bool) -> GridForm:
        """Return the full form, or the quick form completed from the full one."""
        if not quick:
            return self.full
        given = {key: value for key, value in self.quick.model_dump().items() if value is not None}
        return GridForm(**{**self.full.model_dump(), **given})


@dataclass(frozen=True)
class Trial:
    """One grid point: its position, name, the values of each axis, its seed and its complete overrides."""

    index: int
    name: str
    axis_values: dict[str, Any]
    seed: int
    overrides: dict[str, Any]
    config: ExperimentConfig

    def tags(self) -> dict[str, str]:
        """Return the MLflow tags of this trial: ``axis.<key>`` per axis value, its seed and its name."""
        tags = {f"axis.{key}": format_value(value) for key, value in self.axis_values.items()}
        return {**tags, "seed": str(self.seed), "trial": self.name}


@dataclass(frozen=True)
class Grid:
    """A loaded grid: where it came from, its spec, the form in use and its expanded, validated trials."""

    path: Path
    spec: GridSpec
    quick: bool
    trials: tuple[Trial, ...]

    @property
    def sweep_name(self) -> str:
        """Return the sweep's name: the grid's, with ``-quick`` for the quick form."""
        return f"{self.spec.name}-quick" if self.quick else self.spec.name

    @property
    def axes(self) -> list[str]:
        """Return the axis keys in file order (zipped keys included, seeds excluded)."""
        return list(self.trials[0].axis_values) if self.trials else []


def format_value(value: Any) -> str:
    """Return an axis value as it appears in tags, names and tables (``[3000, 1000]``, ``0.05``, ``true``)."""
    if isinstance(value, bool):
        return str(value).lower()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def resolve_grid_path(path: str | Path) -> Path:
    """Return the grid file for ``path`` (a path, or a name in ``tuning/grids/``); raise GridError if missing."""
    candidate = Path(path)
    for option in (candidate, GRID_DIR / candidate, GRID_DIR / f"{candidate}.yaml"):
        if option.is_file():
            return option
    raise GridError(f"grid file not found: {path} (looked in the working directory and {GRID_DIR})")


def _describe_error(item: Any) -> str:
    """Return one validation error as ``key.path: message`` (only the message for a whole-file rule)."""
    message = item["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in item["loc"])
    return f"{where}: {message}" if where else message


def read_spec(path: Path) -> GridSpec:
    """Return the validated contents of grid file ``path``; raise GridError naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"grid {path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise GridError(f"grid {path}: must hold a mapping (name, metric, full, quick, ...)")
    try:
        return GridSpec(**raw)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(item) for item in exc.errors())
        raise GridError(f"grid {path}: {problems}") from None


def _axis_columns(path: Path, form: GridForm, axes_key: str) -> list[list[dict[str, Any]]]:
    """Return each axis as its list of ``{key: value}`` settings (a zipped group sets several keys at once)."""
    if not form.axes and not form.zip:
        # A grid without an axis is one trial, not an ablation: almost surely a mistake in the file.
        raise GridError(f"grid {path}: {axes_key} is empty and there is no zip group: a grid needs at least one axis")
    columns: list[list[dict[str, Any]]] = []
    for key, values in form.axes.items():
        if not values:
            raise GridError(f"grid {path}: axis {key} is empty")
        columns.append([{key: value} for value in values])
    for number, group in enumerate(form.zip):
        lengths = {key: len(values) for key, values in group.items()}
        if not group or not all(lengths.values()):
            raise GridError(f"grid {path}: zipped axis group {number} is empty: {group}")
        if len(set(lengths.values())) != 1:
            raise GridError(f"grid {path}: zipped axes must have equal lengths, got {lengths}")
        columns.append([dict(zip(group, values, strict=True)) for values in zip(*group.values(), strict=True)])
    keys = [key for column in columns for key in column[0]]
    repeated = sorted({key for key in keys if keys.count(key) > 1} | (set(keys) & set(form.set)))
    if repeated:
        raise GridError(f"grid {path}: key(s) {', '.join(repeated)} set by two axes, or by set and an axis")
    if "train.seed" in keys or "train.seed" in form.set:
        raise GridError(f"grid {path}: set seeds with the seeds list, not train.seed")
    return columns


def _check(path: Path, what: str, build: Any) -> ExperimentConfig:
    """Return ``build()``; raise GridError naming the grid file and ``what`` if the config is invalid."""
    try:
        return build()
    except ConfigError as exc:
        raise GridError(f"grid {path}: {what}: {str(exc).removeprefix('invalid config: ')}") from None


def _set_only(values: dict[str, Any]) -> dict[str, Any]:
    """Return the axis values that set their key (``null`` leaves it unset)."""
    return {key: value for key, value in values.items() if value is not None}


def _validated(base: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Return ``base`` with ``overrides`` after the driver's own checks (method, batch size, world size)."""
    from pipeline.runtime.launch import validate  # torch-heavy: imported only once a grid is expanded

    config = with_overrides(base, overrides)
    validate(config)
    return config


def _trial_name(spec: GridSpec, index: int, quick: bool) -> str:
    """Return a trial's name: grid name, form and position (also its Ray run folder and MLflow run name)."""
    return f"{spec.name}{'-quick' if quick else ''}-{index:03d}"


def load_grid(path: str | Path, quick: bool = False, extra: dict[str, Any] | None = None) -> Grid:
    """Return the grid in ``path`` expanded into validated trials (``extra`` overrides every trial, e.g. ``--set``).

    Each axis value is checked on its own first, so that an error names the axis and the value;
    then every complete trial is built and checked by its method (``pipeline.runtime.launch.validate``).
    """
    grid_path = resolve_grid_path(path)
    spec = read_spec(grid_path)
    form = spec.form(quick)
    base_config = _check(grid_path, f"base {form.base}", lambda: load_config(form.base))
    fixed = {**form.set, **form.resources.overrides(), **(extra or {})}
    fixed["eval.linear.enabled"] = spec.evaluation == "linear"
    base = _check(grid_path, "set", lambda: with_overrides(base_config, fixed))
    columns = _axis_columns(grid_path, form, "quick.axes" if quick and spec.quick.axes is not None else "full.axes")
    for column in columns:
        for setting in column:
            described = ", ".join(f"axis {key} = {format_value(value)}" for key, value in setting.items())
            _check(grid_path, described, lambda setting=setting: with_overrides(base, _set_only(setting)))
    trials: list[Trial] = []
    for combination in itertools.product(*columns):
        axis_values = {key: value for setting in combination for key, value in setting.items()}
        for seed in form.seeds:
            index = len(trials)
            overrides = {**fixed, **_set_only(axis_values), "train.seed": seed}
            described = ", ".join(f"{key} = {format_value(value)}" for key, value in axis_values.items()) or "base"
            config = _check(grid_path, f"trial {index} ({described})", lambda o=overrides: _validated(base_config, o))
            trials.append(Trial(index, _trial_name(spec, index, quick), axis_values, seed, overrides, config))
    return Grid(grid_path, spec, quick, tuple(trials))


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Return ``--set key=value`` assignments as ``{key: parsed value}``; raise GridError on a malformed one."""
    from pipeline.config import parse_value

    parsed: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise GridError(f"--set expects key=value with a dotted key, got {assignment!r}")
        parsed[key] = parse_value(text)
    return parsed
