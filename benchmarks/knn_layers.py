"""Weighted-kNN top-1 of a run's checkpoints on the backbone's pooled features and on the projection head's output.

The project's per-epoch kNN monitor embeds images with the backbone (pooled features, the representation a
linear probe reads). The official MoCo CIFAR-10 demo's monitor embeds them with the whole query encoder, its
projection included (a 128-d output). A curve measured one way is set beside one measured the other way with
this: for each complete checkpoint of a run it prints both figures, with the monitor's bank (the training
set under the evaluation view), k and temperature. Methods whose online encoder carries the projection head
(``method.online``: MoCo v2, ASCL, HCSC). One process, no Ray or MLflow.
Example: ``python benchmarks/knn_layers.py --run runs/<run> --set data.root=DEST``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from pipeline.config import ExperimentConfig, load_config
from pipeline.data.build import build_source
from pipeline.data.loader import EpochLoader, build_loader
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluation.knn import knn_top1
from pipeline.evaluation.monitor import extract_features
from pipeline.methods import Method, build_method
from pipeline.training.checkpoints import checkpoint_epoch, checkpoint_folders, incomplete_reason, load_checkpoint
from pipeline.training.step import autocast_dtype

CPU = torch.device("cpu")


def complete_checkpoints(run_dir: Path, epochs: list[int] | None = None) -> list[Path]:
    """Return the run's complete ``epoch_NNNN`` folders (those of ``epochs`` if given), oldest first.

    Exits naming the run when it has none, or naming each asked-for epoch that has no complete checkpoint.
    """
    folders = [folder for folder in reversed(checkpoint_folders(run_dir)) if incomplete_reason(folder) is None]
    if not folders:
        raise SystemExit(f"--run {run_dir}: no complete checkpoint (epoch_NNNN folder) in it")
    if epochs is None:
        return folders
    found = {checkpoint_epoch(folder): folder for folder in folders}
    missing = sorted(set(epochs) - set(found))
    if missing:
        raise SystemExit(f"--epochs {missing}: {run_dir} holds complete checkpoints of epochs {sorted(found)} only")
    return [found[epoch] for epoch in sorted(set(epochs))]


def eval_loader(config: ExperimentConfig, split: str) -> tuple[EpochLoader, torch.Tensor, int]:
    """Return the split's loader under the evaluation view, its labels ``[N]`` and its number of classes."""
    source = build_source(config.data, split, transform=build_view(EVAL_VIEW, config.data))
    loader = build_loader(
        source,
        config.train.batch_size,
        rank=0,
        world_size=1,
        shuffle=False,
        drop_last=False,
        seed=config.data.seed,
        num_workers=config.data.num_workers,
    )
    return loader, torch.as_tensor(source.labels, dtype=torch.long), source.num_classes


def layer_knn(
    config: ExperimentConfig,
    network: nn.Module,
    train: tuple[EpochLoader, torch.Tensor],
    test: tuple[EpochLoader, torch.Tensor],
    classes: int,
) -> float:
    """Return the weighted-kNN top-1 (percent) of ``network``'s L2-normalised outputs, test set against training set."""
    dtype = autocast_dtype(config.train.amp, CPU)
    bank, bank_index = extract_features(network, train[0], CPU, dtype, config.train.channels_last)
    queries, query_index = extract_features(network, test[0], CPU, dtype, config.train.channels_last)
    bank_labels = train[1][bank_index]
    labelled = bank_labels >= 0  # unlabelled training images (label -1) cannot vote, as in the monitor
    return knn_top1(
        bank[labelled],
        bank_labels[labelled],
        queries,
        test[1][query_index],
        classes,
        k=config.eval.knn_k,
        temperature=config.eval.knn_temperature,
    )


def knn_layers(run_dir: Path, overrides: list[str], epochs: list[int] | None = None) -> list[tuple[int, float, float]]:
    """Return ``(epochs, backbone kNN top-1, head kNN top-1)`` per complete checkpoint (of ``epochs``), oldest first."""
    config = load_config(run_dir / "config.yaml", overrides)
    checkpoints = complete_checkpoints(run_dir, epochs)
    train_loader, train_labels, classes = eval_loader(config, "train")
    test_loader, test_labels, _ = eval_loader(config, "test")
    method: Method = build_method(config, classes)
    encoder = getattr(method, "online", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "backbone"):
        raise SystemExit(f"method {config.method.name!r} has no online encoder with a projection head")
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    rows = []
    for checkpoint in checkpoints:
        method.load_state_dict(load_checkpoint(checkpoint)["method"])
        figures = [
            layer_knn(config, network, (train_loader, train_labels), (test_loader, test_labels), classes)
            for network in (encoder.backbone, encoder)
        ]
        rows.append((checkpoint_epoch(checkpoint), *figures))
    return rows


def main() -> None:
    """Parse arguments and print one line per complete checkpoint of the run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a run folder (holds config.yaml and epoch_NNNN)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.root=DEST")
    parser.add_argument("--epochs", type=int, nargs="+", help="only these checkpoints (default: every complete one)")
    args = parser.parse_args()
    if not (args.run / "config.yaml").is_file():
        raise SystemExit(f"--run {args.run}: not a run folder (no config.yaml)")
    print(f"{args.run.name}: weighted kNN (test set against the training set), backbone features vs head output")
    for epochs, backbone, head in knn_layers(args.run, args.set, args.epochs):
        print(f"after epoch {epochs:4d}  backbone {backbone:6.2f}%  head {head:6.2f}%", flush=True)


if __name__ == "__main__":
    main()
