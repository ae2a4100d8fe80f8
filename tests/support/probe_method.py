"""A method plugin for tests (``PIPELINE_PLUGINS=tests.support.probe_method``): it records what the interface hands it.

It trains a tiny encoder on a trivial loss and writes, through a run-scoped recorder actor, the
dataset indices of every batch, each epoch context, the value rank 0 broadcast, and a pass over
the whole training set gathered by index. The recorder appends JSON lines to a file the test reads
after the run (the actor itself is gone by then).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.methods import ActorSpec, Batch, EpochContext, Method, MethodContext, StepInfo, register_method
from pipeline.methods.augmentations import ASCL_WEAK
from pipeline.methods.common import build_encoder
from pipeline.methods.registry import MethodConfig, register_params


@register_params
class ProbeConfig(MethodConfig):
    """Where the recorder writes."""

    name: Literal["probe"] = "probe"
    record_path: str = ""


class Recorder:
    """Run-scoped actor: appends one JSON line per call to ``path`` (one process, so lines never interleave)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.write({"event": "actor_started", "pid": os.getpid()})

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as a JSON line."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Return every record the recorder wrote."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@register_method(ProbeConfig)
class Probe(Method[ProbeConfig]):
    """Trivial objective; records the batch indices and the epoch context it receives."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.encoder = build_encoder(context.config.model, context.batch_norm)
        self.recorder: Any = None
        self.epoch = -1

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return one weak view."""
        return {"image": ASCL_WEAK}

    @classmethod
    def resources(cls, config: ExperimentConfig) -> dict[str, ActorSpec]:
        """Return the recorder actor."""
        return {"recorder": ActorSpec(Recorder, args=(config.method.record_path,))}

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the backbone."""
        return {"backbone": self.encoder.backbone}

    def on_epoch_start(self, context: EpochContext) -> None:
        """Record the context, what rank 0 broadcast, and a whole-training-set pass gathered by index."""
        self.recorder = context.resource("recorder")
        self.epoch = context.epoch
        drawn = torch.randint(0, 10**9, ()).item()  # differs per rank: workers are seeded by rank
        received = context.broadcast({"from_rank": context.rank, "drawn": drawn})
        features, indices = context.extract_features(self.encoder.backbone)
        gathered = context.gather_by_index(features, indices)
        record = {
            "event": "epoch_start",
            "pid": os.getpid(),
            "epoch": context.epoch,
            "rank": context.rank,
            "world_size": context.world_size,
            "device": str(context.device),
            "num_train": context.num_train,
            "drawn": drawn,
            "received": received,
            "gathered_rows": int(gathered.shape[0]),
            "gathered_nonzero_rows": int((gathered.norm(dim=1) > 0).sum()),
        }
        self.recorder.write.remote(record)

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return a trivial loss; record the batch's dataset indices and labels."""
        embeddings = F.normalize(self.encoder(batch.views["image"]), dim=1)
        loss = embeddings.pow(2).sum(dim=1).mean() + embeddings.mean().pow(2)
        record = {
            "event": "batch",
            "epoch": self.epoch,
            "rank": self.context.rank,
            "step": step.global_step,
            "indices": batch.indices.tolist(),
            "labels": batch.labels.tolist(),
        }
        self.recorder.write.remote(record)
        return {"loss": loss}
