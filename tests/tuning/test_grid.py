"""Grid files: expansion into trials (axes, zipped axes, seeds, null), the shipped grids, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuning.grid import GRID_DIR, GridError, format_value, load_grid, parse_assignments, read_spec

TINY = {"data.synthetic.num_train": 64, "train.batch_size": 16, "method.queue_size": 64}


def write_grid(tmp_path: Path, **fields: object) -> Path:
    """Write a grid on the quickstart with ``fields`` merged into its full form; return its path."""
    full = {"base": "quickstart.yaml", "set": dict(TINY), **fields}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "test_grid", "metric": "knn/top1", "full": full}))
    return path


def test_axes_zipped_groups_and_seeds_expand_in_order(tmp_path: Path) -> None:
    path = write_grid(
        tmp_path,
        axes={"method.temperature": [0.1, 0.2]},
        zip=[{"method.momentum": [0.99, 0.999], "optim.lr": [0.1, 0.05]}],
        seeds=[0, 1],
    )
    grid = load_grid(path)
    assert len(grid.trials) == 2 * 2 * 2
    assert grid.axes == ["method.temperature", "method.momentum", "optim.lr"]
    first, last = grid.trials[0], grid.trials[-1]
    assert first.axis_values == {"method.temperature": 0.1, "method.momentum": 0.99, "optim.lr": 0.1}
    assert (first.seed, grid.trials[1].seed) == (0, 1)
    assert last.axis_values == {"method.temperature": 0.2, "method.momentum": 0.999, "optim.lr": 0.05}
    assert last.config.method.momentum == 0.999 and last.config.optim.lr == 0.05 and last.config.train.seed == 1
    assert last.config.data.synthetic.num_train == 64, "the grid's set applies to every trial"
    assert [trial.name for trial in grid.trials[:2]] == ["test_grid-000", "test_grid-001"]
    assert last.tags() == {
        "axis.method.temperature": "0.2",
        "axis.method.momentum": "0.999",
        "axis.optim.lr": "0.05",
        "seed": "1",
        "trial": "test_grid-007",
    }


def test_null_leaves_a_key_unset_so_methods_can_share_a_zipped_axis(tmp_path: Path) -> None:
    zipped = [{"method.name": ["moco", "supcon"], "method.queue_size": [128, None]}]
    path = write_grid(tmp_path, set={"train.batch_size": 16}, zip=zipped)
    moco, supcon = load_grid(path).trials
    assert moco.config.method.name == "moco" and moco.config.method.queue_size == 128
    assert supcon.config.method.name == "supcon" and not hasattr(supcon.config.method, "queue_size")


def test_the_quick_form_takes_what_it_leaves_out_from_the_full_form(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    full = {"base": "quickstart.yaml", "axes": {"method.temperature": [0.1, 0.2]}, "seeds": [0, 1]}
    quick = {"set": {**TINY, "train.epochs": 1}, "seeds": [3]}
    path.write_text(yaml.safe_dump({"name": "g", "evaluation": "linear", "full": full, "quick": quick}))
    grid = load_grid(path, quick=True, extra={"train.batch_size": 32})
    assert grid.sweep_name == "g-quick" and [t.seed for t in grid.trials] == [3, 3]
    assert grid.trials[1].config.method.temperature == 0.2 and grid.trials[1].config.train.epochs == 1
    assert grid.trials[0].config.train.batch_size == 32, "--set overrides every trial"
    assert grid.trials[0].config.eval.linear.enabled, "evaluation: linear turns the linear stage on"


@pytest.mark.parametrize("path", sorted(GRID_DIR.glob("*.yaml")), ids=lambda path: path.stem)
@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_grid_expands_into_valid_trials(path: Path, quick: bool) -> None:
    grid = load_grid(path, quick=quick)
    assert grid.trials and len({trial.name for trial in grid.trials}) == len(grid.trials)
    if quick:
        assert all(trial.config.data.source == "synthetic" for trial in grid.trials)
        assert all(trial.config.train.epochs <= 3 for trial in grid.trials)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"axes": {"method.temprature": [0.1]}}, r"axis method.temprature = 0.1: unknown key 'method.temprature'"),
        ({"axes": {"method.temperature": []}}, r"axis method.temperature is empty"),
        ({"axes": {"method.temperature": [0.1, -1]}}, r"axis method.temperature = -1: method.temperature"),
        ({"zip": [{"method.momentum": [0.9, 0.99], "optim.lr": [0.1]}]}, r"zipped axes must have equal lengths"),
        ({"axes": {"train.seed": [1, 2]}}, r"set seeds with the seeds list"),
        ({"axes": {"method.temperature": [0.1]}, "zip": [{"method.temperature": [0.2]}]}, r"set by two axes"),
        ({"axes": {"ray.num_workers": [3]}}, r"trial 0 \(ray.num_workers = 3\): train.batch_size = 16 is not"),
        ({"base": "no_such.yaml"}, r"base no_such.yaml: config file not found"),
        ({"seeds": []}, r"full.seeds"),
    ],
)
def test_bad_grids_name_the_file_the_axis_and_the_value(tmp_path: Path, fields: dict, message: str) -> None:
    path = write_grid(tmp_path, **fields)
    with pytest.raises(GridError, match=message) as error:
        load_grid(path)
    assert str(path) in str(error.value)


def test_missing_grid_files_and_malformed_assignments_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="grid file not found: nowhere.yaml"):
        load_grid("nowhere.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(GridError, match="must hold a mapping"):
        load_grid(tmp_path / "list.yaml")
    unknown = {"name": "x", "full": {"base": "quickstart.yaml"}, "sweep": 1}
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(unknown))
    with pytest.raises(GridError, match="sweep: Extra inputs are not permitted"):
        load_grid(tmp_path / "unknown.yaml")
    assert parse_assignments(["train.epochs=3", "method.hierarchy=[20, 10]"]) == {
        "train.epochs": 3,
        "method.hierarchy": [20, 10],
    }
    with pytest.raises(GridError, match="--set expects key=value"):
        parse_assignments(["epochs"])


def test_axis_values_print_as_written() -> None:
    assert [format_value(value) for value in (True, 0.05, [3000, 1000], "ascl", None)] == [
        "true",
        "0.05",
        "[3000, 1000]",
        "ascl",
        "null",
    ]


def test_asha_is_off_by_default_and_wants_a_per_epoch_metric(tmp_path: Path) -> None:
    spec = read_spec(write_grid(tmp_path))
    assert spec.search == "grid" and spec.asha.grace_period == 1 and spec.asha.reduction_factor == 2
    path = tmp_path / "asha.yaml"
    full = {"base": "quickstart.yaml", "set": dict(TINY)}
    fields = {"name": "asha", "search": "asha", "asha": {"grace_period": 2}, "full": full}
    path.write_text(yaml.safe_dump({**fields, "metric": "train/loss", "mode": "min"}))
    assert read_spec(path).asha.grace_period == 2
    path.write_text(yaml.safe_dump({**fields, "metric": "eval/features/backbone/top1"}))
    with pytest.raises(GridError, match=r"asha.yaml: search: asha stops trials on a metric logged every epoch"):
        read_spec(path)
    path.write_text(yaml.safe_dump({**fields, "metric": "knn/top1", "asha": {"reduction_factor": 1}}))
    with pytest.raises(GridError, match=r"asha.reduction_factor"):
        read_spec(path)


def test_a_malformed_grid_file_is_one_line_naming_where(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nfull:\n  base: quickstart.yaml\n  axes: {optim.lr: [0.1, 0.2}\n")
    with pytest.raises(GridError) as error:
        load_grid(path)
    assert str(error.value) == f"grid {path}: not valid YAML: expected ',' or ']', but got '}}' at line 4, column 29"


def test_a_grid_without_any_axis_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"full.axes is empty and there is no zip group: a grid needs at least one"):
        load_grid(write_grid(tmp_path, axes={}))
    path = tmp_path / "quick.yaml"
    full = {"base": "quickstart.yaml", "set": dict(TINY), "axes": {"method.temperature": [0.1, 0.2]}}
    path.write_text(yaml.safe_dump({"name": "quick_grid", "full": full, "quick": {"axes": {}}}))
    assert len(load_grid(path).trials) == 2
    with pytest.raises(GridError, match=r"quick.axes is empty"):
        load_grid(path, quick=True)
