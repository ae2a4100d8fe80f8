"""The linear evaluation stage: a finished run's checkpoint -> frozen evaluation networks -> linear probes -> metrics.

The ``augmented`` protocol trains in ``pipeline.evaluation.linear_ray``; ``pipeline.evaluate`` dispatches and records.
Protocol ``features``: each evaluation network (and, with ``eval.linear.baselines``, raw pixels and the
backbone at its random initialisation) embeds both splits once under the evaluation view
(optionally averaged with the mirrored image), the features are cached beside the run keyed by
checkpoint, network and data, and a linear probe is trained on the cached tensors. Results are
written beside the run and reused for the same checkpoint and settings unless forced.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import ExperimentConfig, LinearEvalConfig, load_config
from pipeline.data.build import build_source
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluation.linear import ProbeSettings, train_linear_probe
from pipeline.evaluation.metrics import (
    confusion_matrix,
    ensemble_logits,
    per_class_accuracy,
    shot_accuracy,
    shot_thresholds,
    topk_accuracy,
)
from pipeline.evaluation.monitor import extract_features
from pipeline.methods import build_method, get_method
from pipeline.record.run import RunHandle, log_artifact, log_metrics, log_text, set_tags
from pipeline.runtime.progress import ImageProgress
from pipeline.training.checkpoints import (
    MANIFEST_FILE,
    RUN_CONFIG_FILE,
    checkpoint_epoch,
    latest_checkpoint,
    load_checkpoint,
)

EVAL_DIR = "eval"
ENSEMBLE = "ensemble"
BASELINES = ("raw_pixels", "random_init")


class EvaluationError(RuntimeError):
    """The run cannot be evaluated; the message names the run folder and why."""


@dataclass
class NetworkResult:
    """One classifier's metrics (percent) and its per-class accuracy and confusion counts."""

    top1: float
    top5: float
    many: float | None
    medium: float | None
    few: float | None
    per_class: list[float] = field(repr=False)
    confusion: list[list[int]] = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """Return the scalar metrics that exist (a group without classes is left out)."""
        values = {"top1": self.top1, "top5": self.top5, "many": self.many, "medium": self.medium, "few": self.few}
        return {key: value for key, value in values.items() if value is not None}


@dataclass
class EvaluationResult:
    """What the stage produced for one checkpoint and one set of settings."""

    run_dir: str
    checkpoint: str
    protocol: str
    settings_key: str
    sampling: str
    thresholds: dict[str, Any]
    networks: dict[str, NetworkResult]
    reused: bool = False

    def table(self) -> str:
        """Return the result as an aligned text table, one row per classifier."""
        rows = [f"{'classifier':12s} {'top-1':>7s} {'top-5':>7s} {'many':>7s} {'medium':>7s} {'few':>7s}"]
        for name, result in self.networks.items():
            cells = [result.top1, result.top5, result.many, result.medium, result.few]
            rows.append(f"{name:12s} " + " ".join(f"{v:7.2f}" if v is not None else f"{'-':>7s}" for v in cells))
        threshold = self.thresholds
        rows.append(
            f"many: > {threshold['many']:g} training images, few: < {threshold['few']:g}"
            f"{' (scaled to this data set)' if threshold['scaled'] else ''}; sampling {self.sampling}"
        )
        return "\n".join(rows)

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        """Return a result stored by ``to_json``."""
        raw = json.loads(text)
        raw["networks"] = {name: NetworkResult(**values) for name, values in raw["networks"].items()}
        return cls(**raw)

    def to_json(self) -> str:
        """Return the result as JSON text."""
        return json.dumps(asdict(self), indent=1)


class FlipAveraged(nn.Module):
    """A network whose features are the mean over the image and its mirror image."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the mean of the features of ``images`` and of their horizontal flips."""
        return (self.network(images) + self.network(images.flip(dims=[3]))) / 2


def _hash(payload: Any) -> str:
    """Return a short stable hash of a JSON-serialisable payload."""
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def load_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Return the resolved config a run was trained with, plus ``overrides``; raise EvaluationError when absent."""
    path = run_dir / RUN_CONFIG_FILE
    if not run_dir.is_dir():
        raise EvaluationError(f"no run folder at {run_dir}")
    if not path.is_file():
        raise EvaluationError(f"{run_dir} holds no {RUN_CONFIG_FILE}: not a run folder written by pipeline.pretrain")
    return load_config(path, overrides)


def finished_checkpoint(run_dir: Path, config: ExperimentConfig) -> Path:
    """Return the run's final complete checkpoint; raise EvaluationError for a run that has not finished."""
    checkpoint = latest_checkpoint(run_dir)
    done = checkpoint_epoch(checkpoint) if checkpoint is not None else 0
    if done < config.train.epochs:
        raise EvaluationError(
            f"run {run_dir.name} is not finished ({done}/{config.train.epochs} epochs saved): "
            "evaluate it when pretraining is done (rerun pretraining to resume it)"
        )
    return checkpoint


def baseline_networks(config: ExperimentConfig, num_classes: int) -> dict[str, nn.Module]:
    """Return the floors a learned representation must beat: raw pixels, and the backbone at its random init."""
    torch.manual_seed(config.train.seed)
    untrained = build_method(config, num_classes).eval().requires_grad_(False)
    return dict(zip(BASELINES, (nn.Flatten(), untrained.evaluation_networks()["backbone"]), strict=True))


def evaluation_networks(config: ExperimentConfig, checkpoint: Path, num_classes: int) -> dict[str, nn.Module]:
    """Return the method's evaluation networks with the checkpoint's weights, frozen and in eval mode."""
    try:
        get_method(config.method.name)
    except ValueError as exc:
        raise EvaluationError(f"checkpoint {checkpoint} was trained by a method this install lacks: {exc}") from None
    method = build_method(config, num_classes, world_size=max(config.ray.num_workers, 1))
    state = load_checkpoint(checkpoint)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise EvaluationError(f"checkpoint {checkpoint} does not hold a {config.method.name} method: {first}") from None
    method.eval().requires_grad_(False)
    return method.evaluation_networks()


def probe_settings(linear: LinearEvalConfig, long_tailed: bool) -> ProbeSettings:
    """Return the probe's training settings; ``auto`` sampling is class-balanced for long-tailed training data."""
    sampling = linear.sampling if linear.sampling != "auto" else ("class_balanced" if long_tailed else "uniform")
    return ProbeSettings(
        optimizer=linear.optimizer,
        epochs=linear.epochs,
        batch_size=linear.batch_size,
        lr=linear.lr,
        weight_decay=linear.weight_decay,
        sampling=sampling,
        loss_weighting=linear.loss_weighting,
        seed=linear.seed,
    )


def cached_features(
    network: nn.Module, config: ExperimentConfig, split: str, cache: Path, device: torch.device, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the network's features ``[N, D]`` and labels ``[N]`` of a split, from the cache file when present.

    Embedding prints progress lines (``features <name> <split>: done/total images, img/s, ETA``).
    """
    if cache.is_file():
        stored = torch.load(cache, map_location=device, weights_only=True)
        return stored["features"], stored["labels"]
    source = build_source(config.data, split, transform=build_view(EVAL_VIEW, config.data))
    loader = DataLoader(source, batch_size=256, num_workers=config.data.num_workers)
    model = FlipAveraged(network) if config.eval.linear.flip_average else network
    progress = ImageProgress(functools.partial(print, flush=True), f"features {name} {split}:", len(source))
    features, indices = extract_features(model.to(device), loader, device, normalize=False, progress=progress)
    order = torch.argsort(indices)
    features = features[order]
    labels = torch.as_tensor(source.labels, dtype=torch.long, device=device)[indices[order]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features": features.cpu(), "labels": labels.cpu()}, cache)
    return features, labels


def _classifier_result(
    logits: torch.Tensor, labels: torch.Tensor, train_counts: torch.Tensor, thresholds: Any, num_classes: int
) -> NetworkResult:
    """Return the metrics of one classifier's test logits."""
    predictions = logits.argmax(dim=1)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    groups = shot_accuracy(per_class.cpu(), train_counts, thresholds)
    return NetworkResult(
        top1=topk_accuracy(logits, labels, 1),
        top5=topk_accuracy(logits, labels, 5),
        many=groups["many"],
        medium=groups["medium"],
        few=groups["few"],
        per_class=per_class.tolist(),
        confusion=confusion_matrix(predictions, labels, num_classes).tolist(),
    )


def settings_key(config: ExperimentConfig, checkpoint: Path) -> str:
    """Return the key of an evaluation: checkpoint identity, data and every linear-evaluation setting."""
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    data_key = config.data.model_dump(mode="json", exclude={"num_workers"})
    return _hash([checkpoint.name, manifest, data_key, config.eval.linear.model_dump(mode="json", exclude={"enabled"})])


def networks_to_probe(config: ExperimentConfig, checkpoint: Path, num_classes: int) -> dict[str, nn.Module]:
    """Return the evaluation networks and, when ``eval.linear.baselines``, the baselines after them."""
    networks = evaluation_networks(config, checkpoint, num_classes)
    baselines = baseline_networks(config, num_classes) if config.eval.linear.baselines else {}
    return {**networks, **baselines}


def feature_cache(config: ExperimentConfig, checkpoint: Path, run_dir: Path, name: str, split: str) -> Path:
    """Return the cache file of network ``name``'s features of ``split`` (keyed by checkpoint, data and flips)."""
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    data_key = config.data.model_dump(mode="json", exclude={"num_workers"})
    feature_key = _hash([checkpoint.name, manifest, data_key, name, config.eval.linear.flip_average])
    return run_dir / EVAL_DIR / "cache" / f"{split}-{feature_key}.pt"


def backbone_test_features(
    config: ExperimentConfig, checkpoint: Path, run_dir: Path, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the checkpoint's backbone features ``[M, D]`` of the test split and its labels (cached, shared)."""
    num_classes = build_source(config.data, "train").num_classes
    backbone = evaluation_networks(config, checkpoint, num_classes)["backbone"]
    cache = feature_cache(config, checkpoint, run_dir, "backbone", "test")
    return cached_features(backbone, config, "test", cache, device, "backbone")


def features_logits(
    config: ExperimentConfig, checkpoint: Path, run_dir: Path, num_classes: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Return each probed network's test logits ``{name: [M, C]}`` and the test labels ``[M]`` (features protocol)."""
    settings = probe_settings(config.eval.linear, config.data.long_tail_ratio is not None)
    logits: dict[str, torch.Tensor] = {}
    test_labels = torch.empty(0, dtype=torch.long)
    for name, network in networks_to_probe(config, checkpoint, num_classes).items():
        train_features, train_labels = cached_features(
            network, config, "train", feature_cache(config, checkpoint, run_dir, name, "train"), device, name
        )
        test_features, test_labels = cached_features(
            network, config, "test", feature_cache(config, checkpoint, run_dir, name, "test"), device, name
        )
        probe = train_linear_probe(train_features, train_labels, num_classes, settings)
        with torch.no_grad():
            logits[name] = probe(test_features)
    return logits, test_labels


def summarise(
    config: ExperimentConfig,
    run_dir: Path,
    checkpoint: Path,
    key: str,
    sampling: str,
    logits: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    evaluated: list[str],
) -> EvaluationResult:
    """Return the metrics of test logits per classifier, plus the ensemble of several ``evaluated`` networks."""
    linear = config.eval.linear
    train_source = build_source(config.data, "train")
    num_classes = train_source.num_classes
    train_counts = torch.as_tensor(train_source.class_counts())
    thresholds = shot_thresholds(train_counts, linear.many_threshold, linear.few_threshold, linear.scale_thresholds)
    labelled = test_labels >= 0
    labels = test_labels[labelled]
    results = {
        name: _classifier_result(value[labelled], labels, train_counts, thresholds, num_classes)
        for name, value in logits.items()
    }
    if len(evaluated) > 1:
        combined = ensemble_logits([logits[name] for name in evaluated])[labelled]
        results[ENSEMBLE] = _classifier_result(combined, labels, train_counts, thresholds, num_classes)
    return EvaluationResult(
        run_dir=str(run_dir),
        checkpoint=str(checkpoint),
        protocol=linear.protocol,
        settings_key=key,
        sampling=sampling,
        thresholds={"many": thresholds.many, "few": thresholds.few, "scaled": thresholds.scaled},
        networks=results,
    )


def confusion_png(confusion: list[list[int]], title: str, path: Path) -> None:
    """Write the confusion matrix (rows: true class, columns: predicted, row-normalised) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(confusion, dtype=torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    figure, axes = plt.subplots(figsize=(6, 5))
    image = axes.imshow(rates.numpy(), vmin=0, vmax=1, cmap="viridis")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def record_evaluation(result: EvaluationResult, run: RunHandle) -> None:
    """Log the result into the pretraining run: metrics, per-class CSV and confusion PNG per classifier, the table."""
    prefix = f"eval/{result.protocol}"
    step = checkpoint_epoch(Path(result.checkpoint))
    metrics = {
        f"{prefix}/{name}/{metric}": value
        for name, network in result.networks.items()
        for metric, value in network.metrics().items()
    }
    log_metrics(run, metrics, step=step)
    set_tags(run, {f"{prefix}/settings": result.settings_key, f"{prefix}/sampling": result.sampling})
    artifacts = Path(result.run_dir) / EVAL_DIR / f"artifacts-{result.settings_key}"
    artifacts.mkdir(parents=True, exist_ok=True)
    for name, network in result.networks.items():
        csv = "class,accuracy\n" + "".join(f"{index},{value}\n" for index, value in enumerate(network.per_class))
        log_text(run, csv, f"{prefix}/per_class_{name}.csv")
        png = artifacts / f"confusion_{name}.png"
        confusion_png(network.confusion, f"{name}: linear probe ({result.protocol})", png)
        log_artifact(run, png, prefix)
    log_text(run, result.table() + "\n", f"{prefix}/table.txt")
