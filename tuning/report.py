"""Command line: ``python -m tuning.report --sweep NAME|PARENT_RUN_ID [--tracking-uri URI] [--metrics M1,M2]``.

Reads a sweep's child runs back from MLflow and writes the comparison in the form the papers' ablation
tables use: one row per grid point (axis values; blank where the point leaves a zipped key at its
config's value), the metric's mean ± std over seeds (and each of ``--metrics``, e.g. the final kNN and
the raw-pixel and untrained-network floors of the linear evaluation), the best row marked, pending,
failed, interrupted and (ASHA) early-stopped trials shown. Writes ``report.md``, ``report.csv``, one
plot of the metric against each axis (one line per value of another axis) and the learning curves of
the best and the worst trial, the learning curves of every trial on one figure, and logs them all as
artifacts of the sweep's parent run. Works on a sweep in progress."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.record.names import AUTOCAST_TAG, STOPPED_TAG, SWEEP_TAG, TRIAL_TAG, metric_protocol
from pipeline.record.run import RunHandle, log_artifact, metric_history
from pipeline.record.store import TrackingError, existing_store, resolve_tracking_uri
from pipeline.record.sweep import child_runs, find_parent, planned_trials
from tuning.grid import format_value

LEARNING_CURVE_METRIC = "knn/top1"
# How a zipped key a grid point leaves at its config's value reads among the axis values; blank in the table.
UNSET = format_value(None)
# A finished run without the autocast tag (recorded before the tag existed, or imported from such a run).
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class TrialRecord:
    """One planned trial and what MLflow holds for it (no run yet: pending; ``stopped_at``: ASHA's last epoch)."""

    name: str
    axis_values: dict[str, Any]
    seed: int
    status: str
    value: float | None
    run_id: str | None
    stopped_at: int | None = None
    partial: float | None = None
    extras: dict[str, float] | None = None
    autocast: str | None = None  # the run's autocast tag (train.amp as its device resolved it), None if absent


@dataclass(frozen=True)
class Report:
    """The written report: its table as Markdown, the folder holding the files, and the rows."""

    markdown: str
    folder: Path
    rows: list[dict[str, Any]]


def collect(uri: str, parent: Any, extras: tuple[str, ...] = ()) -> tuple[list[TrialRecord], str, str]:
    """Return every planned trial with its status, metric value and ``extras`` values, and the metric and mode."""
    planned = planned_trials(uri, parent.info.run_id)
    metric, mode = parent.data.params["metric"], parent.data.params["mode"]
    children = child_runs(uri, parent)
    # A trial retried after a failure may hold several runs: the finished one, else the newest, speaks for it.
    preference = {"FINISHED": 2, "RUNNING": 1}
    by_name: dict[str, Any] = {}
    for child in sorted(children, key=lambda run: (preference.get(run.info.status, 0), run.info.start_time)):
        by_name[child.data.tags.get(TRIAL_TAG)] = child
    records = []
    for trial in planned:
        child = by_name.get(trial["name"])
        status = "PENDING" if child is None else child.info.status
        figures = child.data.metrics if child is not None and status == "FINISHED" else {}
        value = figures.get(metric)
        run_id = child.info.run_id if child is not None else None
        stopped = child is not None and STOPPED_TAG in child.data.tags
        records.append(
            TrialRecord(
                trial["name"],
                trial["axis_values"],
                trial["seed"],
                status,
                value,
                run_id,
                stopped_at=int(child.data.tags[STOPPED_TAG]) if stopped else None,
                partial=child.data.metrics.get(metric) if stopped else None,
                extras={key: figures[key] for key in extras if key in figures},
                autocast=child.data.tags.get(AUTOCAST_TAG) if child is not None else None,
            )
        )
    return records, metric, mode


def mean_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and sample standard deviation of ``values`` (std 0 for one value, both NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def extra_figures(members: list[TrialRecord], extras: tuple[str, ...]) -> dict[str, float]:
    """Return ``{metric:mean, metric:std, metric:n}`` for each extra metric over the members that logged it."""
    figures: dict[str, float] = {}
    for key in extras:
        values = [member.extras[key] for member in members if member.extras and key in member.extras]
        mean, std = mean_std(values)
        figures.update({f"{key}:mean": mean, f"{key}:std": std, f"{key}:n": len(values)})
    return figures


def summarise(records: list[TrialRecord], mode: str, extras: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Return one row per grid point: axis values, mean and std over finished seeds (metric and ``extras``), counts."""
    groups: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in records:
        groups[json.dumps(record.axis_values, sort_keys=True)].append(record)
    rows = []
    for members in groups.values():
        values = [member.value for member in members if member.value is not None]
        stopped = [member for member in members if member.stopped_at is not None and member.partial is not None]
        pick = max if mode == "max" else min
        furthest = pick(stopped, key=lambda member: member.partial) if stopped else None
        rows.append(
            {
                **{key: format_value(value) for key, value in members[0].axis_values.items()},
                "mean": statistics.mean(values) if values else math.nan,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan,
                "finished": len(values),
                "seeds": len(members),
                "failed": sum(member.status == "FAILED" for member in members),
                "interrupted": sum(member.status == "KILLED" and member.stopped_at is None for member in members),
                "stopped": len(stopped),
                "stopped_note": f"stopped at epoch {furthest.stopped_at} ({furthest.partial:.2f})" if furthest else "",
                "best": False,
                "autocast": " + ".join(
                    sorted({member.autocast or UNRECORDED for member in members if member.value is not None})
                ),
                **extra_figures(members, extras),
            }
        )
    finished = [row for row in rows if row["finished"]]
    if finished:
        best = (max if mode == "max" else min)(finished, key=lambda row: row["mean"])
        best["best"] = True
    return rows


def extra_cell(row: dict[str, Any], key: str) -> str:
    """Return an extra metric's cell: mean ± std over the seeds that logged it, blank if none did."""
    count = row[f"{key}:n"]
    if not count:
        return ""
    mean, std = row[f"{key}:mean"], row[f"{key}:std"]
    return f"{mean:.2f} ± {std:.2f}" if count > 1 else f"{mean:.2f}"


def markdown_table(rows: list[dict[str, Any]], axes: list[str], metric: str, extras: tuple[str, ...] = ()) -> str:
    """Return the rows as a Markdown table (best row in bold, unfinished points marked, unset axis values blank).

    Where the finished trials ran under different autocast, an ``autocast`` column says which ran under which.
    """
    numerics = {value for row in rows for value in row["autocast"].split(" + ") if value}
    mixed = len(numerics) > 1
    header = [*axes, metric, *extras, *(["autocast"] if mixed else []), "seeds done", "failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["finished"]:
            figure = f"{row['mean']:.2f} ± {row['std']:.2f}" if row["finished"] > 1 else f"{row['mean']:.2f}"
            figure = f"**{figure}**" if row["best"] else figure
        elif row["stopped"]:
            figure = row["stopped_note"]
        else:
            figure = "failed" if row["failed"] else "interrupted" if row["interrupted"] else "pending"
        cells = [
            *("" if row[axis] == UNSET else str(row[axis]) for axis in axes),
            figure,
            *(extra_cell(row, key) for key in extras),
            *([row["autocast"]] if mixed else []),
            f"{row['finished']}/{row['seeds']}",
            str(row["failed"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], axes: list[str], path: Path, extras: tuple[str, ...] = ()) -> None:
    """Write the rows as CSV (axis values, mean, std, the extras' means and stds, counts, stopped, best, autocast)."""
    import csv

    with path.open("w", newline="") as handle:
        measured = [f"{key}:{part}" for key in extras for part in ("mean", "std")]
        fields = [*axes, "mean", "std", *measured, "finished", "seeds", "failed", "stopped", "best", "autocast"]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_axes(rows: list[dict[str, Any]], axes: list[str], metric: str, folder: Path) -> list[Path]:
    """Return the PNGs drawn: the metric against each axis, one line per value of the next axis (if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    finished = [row for row in rows if row["finished"]]
    for index, axis in enumerate(axes or ["trial"]):
        other = axes[(index + 1) % len(axes)] if len(axes) > 1 else None
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in finished:
            lines[str(row[other]) if other else metric].append(row)
        figure, plot = plt.subplots(figsize=(6, 4))
        labels = dict.fromkeys(str(row.get(axis, "")) for row in rows)
        positions = {value: position for position, value in enumerate(labels)}
        for label, members in lines.items():
            xs = [positions[str(member.get(axis, ""))] for member in members]
            plot.errorbar(xs, [m["mean"] for m in members], yerr=[m["std"] for m in members], marker="o", label=label)
        plot.set_xticks(list(positions.values()), list(positions.keys()), rotation=20)
        plot.set_xlabel(axis)
        plot.set_ylabel(metric)
        if other:
            plot.legend(title=other, fontsize="small")
        figure.tight_layout()
        path = folder / f"{metric.replace('/', '_')}_vs_{axis.replace('/', '_')}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def plot_learning_curves(uri: str, records: list[TrialRecord], mode: str, folder: Path) -> Path | None:
    """Return the PNG of the kNN curves of the best and the worst finished trial (None if none finished)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [record for record in records if record.value is not None and record.run_id]
    if not finished:
        return None
    ordered = sorted(finished, key=lambda record: record.value, reverse=mode == "max")
    figure, plot = plt.subplots(figsize=(6, 4))
    for label, record in (("best", ordered[0]), ("worst", ordered[-1])):
        history = metric_history(uri, record.run_id, LEARNING_CURVE_METRIC)
        epochs, values = [step + 1 for step, _ in history], [value for _, value in history]
        plot.plot(epochs, values, marker="o", label=f"{label}: {record.name}")
    plot.set_xlabel("epoch")
    plot.set_ylabel(LEARNING_CURVE_METRIC)
    plot.legend(fontsize="small")
    figure.tight_layout()
    path = folder / "learning_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def trial_curves(uri: str, records: list[TrialRecord]) -> list[tuple[TrialRecord, list[int], list[float]]]:
    """Return each trial's kNN curve as (record, epochs from 1, values), for the trials that logged an epoch."""
    curves = []
    for record in records:
        history = metric_history(uri, record.run_id, LEARNING_CURVE_METRIC) if record.run_id else []
        if history:
            curves.append((record, [step + 1 for step, _ in history], [value for _, value in history]))
    return curves


def plot_all_learning_curves(uri: str, records: list[TrialRecord], folder: Path) -> Path | None:
    """Return the PNG of every trial's kNN curve on one figure (None if no trial has logged an epoch yet).

    Trials that did not finish (running, stopped early, failed, interrupted) are drawn dashed, their
    status in the legend, so a sweep in progress shows where every trial stands.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = trial_curves(uri, records)
    if not curves:
        return None
    figure, plot = plt.subplots(figsize=(7, 4.5))
    for record, epochs, values in curves:
        done = record.value is not None
        label = record.name if done else f"{record.name} ({record.status.lower()})"
        plot.plot(epochs, values, marker="o", markersize=3, linestyle="-" if done else "--", label=label)
    plot.set_xlabel("epoch")
    plot.set_ylabel(LEARNING_CURVE_METRIC)
    plot.set_title(f"{len(curves)} trials")
    plot.legend(fontsize="x-small", ncol=max(1, len(curves) // 12), loc="best")
    figure.tight_layout()
    path = folder / "all_learning_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(uri: str, sweep: str, folder: Path | None = None, extras: tuple[str, ...] = ()) -> Report:
    """Return the sweep's report after writing its files to ``folder`` (a temp folder if None) and to MLflow.

    ``extras`` are further metrics shown beside the grid's own, each as mean ± std over the finished seeds.
    """
    parent = find_parent(uri, sweep)
    records, metric, mode = collect(uri, parent, extras)
    axes = list(records[0].axis_values) if records else []
    rows = summarise(records, mode, extras)
    folder = Path(folder or tempfile.mkdtemp(prefix="sweep-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    counts = defaultdict(int)
    for record in records:
        counts[record.status] += 1
    status = ", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items()))
    title = f"## Sweep {parent.data.tags.get(SWEEP_TAG, sweep)} ({metric}, {mode}; {status})"
    legend = "".join(
        f"{name}: {protocol}.\n\n" for name in dict.fromkeys((metric, *extras)) if (protocol := metric_protocol(name))
    )
    markdown = f"{title}\n\n{legend}{markdown_table(rows, axes, metric, extras)}\n"
    (folder / "report.md").write_text(markdown)
    write_csv(rows, axes, folder / "report.csv", extras)
    files = [folder / "report.md", folder / "report.csv", *plot_axes(rows, axes, metric, folder)]
    for curves in (plot_learning_curves(uri, records, mode, folder), plot_all_learning_curves(uri, records, folder)):
        if curves is not None:
            files.append(curves)
    handle = RunHandle(uri, parent.info.experiment_id, parent.info.run_id)
    for path in files:
        log_artifact(handle, path, "report")
    return Report(markdown, folder, rows)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report and print its table; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tuning.report", description=__doc__)
    parser.add_argument("--sweep", required=True, help="the sweep's name (e.g. ascl_k_mode-quick) or parent run id")
    parser.add_argument("--tracking-uri", help="MLflow store [the default store: sqlite:///mlflow.db here]")
    parser.add_argument("--out", help="folder for the report files [a temporary folder]")
    parser.add_argument(
        "--metrics",
        default="",
        help="further metrics to show, comma-separated (e.g. knn/top1,eval/features/raw_pixels/top1)",
    )
    args = parser.parse_args(argv)
    extras = tuple(name.strip() for name in args.metrics.split(",") if name.strip())
    try:
        uri = existing_store(args.tracking_uri or resolve_tracking_uri(TrackingConfig()))
        report = write_report(uri, args.sweep, Path(args.out) if args.out else None, extras)
    except (ValueError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown)
    print(f"report files in {report.folder} (also artifacts of the sweep's MLflow parent run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
