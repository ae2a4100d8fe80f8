"""HCSC (Guo et al. 2022): MoCo v2 plus hierarchical prototypes with instance- and prototype-wise selective coding.

After ``warmup_epochs`` of plain MoCo v2, every epoch starts by fetching a hierarchy of prototypes
from the run's clustering actor (the momentum encoder's embeddings of the whole training set,
clustered bottom-up with FAISS; the training workers never run k-means). The step then adds, to
MoCo's machinery, the instance loss with selected queue negatives (ICSC, summed over levels) and
the prototype loss with selected negative prototypes (PCSC, averaged over levels). Selection masks
are Bernoulli draws made on the device every step; each query's cluster is looked up by its
dataset index.

With ``clustering.overlap`` the actor clusters the newest weights while the epoch trains with the
previous hierarchy: epoch e uses the weights that ended epoch e−2 (logged as
``clustering/staleness_epochs`` = 1). The first epoch after a start or a restart always waits for
a hierarchy built from the weights it starts from.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from pipeline.config import ExperimentConfig
from pipeline.evaluation.pictures import hierarchy_png
from pipeline.losses import icsc, icsc_selection_probs, pcsc, pcsc_negative_ids, pcsc_selection_probs
from pipeline.methods.common import build_encoder, full_precision
from pipeline.methods.context import ActorSpec, Batch, EpochContext, EpochReport, MethodContext, StepInfo
from pipeline.methods.factory import register_method
from pipeline.methods.hcsc.params import HcscConfig
from pipeline.methods.moco.method import MoCo
from pipeline.models.distributed import concat_all_gather

# Ray and FAISS (through the clustering modules) are imported where they are used, so the method registry
# loads on a machine that has torch alone (the step benchmark on a bare GPU node).
if TYPE_CHECKING:
    from pipeline.clustering.actor import ClusteringResult
    from pipeline.clustering.hierarchy import Hierarchy

ICSC_CLAMP = (0.0, 0.999)
PCSC_CLAMP = (1e-4, 0.999)


@dataclass(frozen=True)
class Prototypes:
    """A hierarchy on the training device: per level centroids ``[N_l, D]``, φ ``[N_l]``, image clusters ``[n]``.

    ``similarity[l]`` is ``[N_l, N_{l+1}]``: each prototype's similarity to the prototypes one level up
    (PCSC's selection needs it every step; it changes only with the hierarchy).
    """

    centroids: tuple[torch.Tensor, ...]
    concentration: tuple[torch.Tensor, ...]
    assignments: tuple[torch.Tensor, ...]
    similarity: tuple[torch.Tensor, ...]

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, device: torch.device) -> Prototypes:
        """Return the hierarchy's levels as tensors on ``device``."""
        centroids = tuple(torch.tensor(level.centroids, device=device) for level in hierarchy.levels)
        return cls(
            centroids=centroids,
            concentration=tuple(torch.tensor(level.concentration, device=device) for level in hierarchy.levels),
            assignments=tuple(
                torch.tensor(level.assignments, dtype=torch.long, device=device) for level in hierarchy.levels
            ),
            similarity=tuple(lower @ upper.T for lower, upper in zip(centroids, centroids[1:], strict=False)),
        )

    @property
    def num_levels(self) -> int:
        """Return the number of levels."""
        return len(self.centroids)


def selection_mask(probabilities: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Return a 0/1 mask drawn on the device: 1 (keep) with probability ``probabilities`` clamped to ``bounds``."""
    return torch.bernoulli(probabilities.clamp(*bounds))


@register_method(HcscConfig)
class Hcsc(MoCo):
    """HCSC: MoCo v2 warm-up, then ICSC instance loss plus PCSC prototype loss over a per-epoch hierarchy."""

    params: HcscConfig

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.prototypes: Prototypes | None = None
        # The newest key this worker process submitted; None after a (re)start, so the first epoch rebuilds.
        self._submitted: int | None = None
        self._report = EpochReport()

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Reject a warm-up that leaves no HCSC epoch, on top of MoCo's checks."""
        super().validate(config, world_size)
        warmup, epochs = config.method.warmup_epochs, config.train.epochs
        if warmup >= epochs:
            raise ValueError(
                f"method.warmup_epochs = {warmup} leaves no HCSC epoch in train.epochs = {epochs} "
                f"(the run would be plain MoCo v2): lower method.warmup_epochs"
            )

    @classmethod
    def validate_data(cls, config: ExperimentConfig, num_train: int) -> None:
        """Reject a hierarchy the training set cannot fill (``method.hierarchy_scale: auto`` shrinks it on request)."""
        from pipeline.clustering.hierarchy import hierarchy_sizes

        params = config.method
        try:
            sizes = hierarchy_sizes(params.hierarchy, num_train, params.hierarchy_scale)
        except ValueError as exc:
            raise ValueError(
                f"method.hierarchy = {params.hierarchy} does not fit the {num_train} training images: {exc} "
                f"(set method.hierarchy or method.hierarchy_scale=auto)"
            ) from None
        if sizes != params.hierarchy:
            print(f"method.hierarchy_scale = auto: hierarchy {params.hierarchy} -> {sizes} for {num_train} images")

    @classmethod
    def resources(cls, config: ExperimentConfig) -> dict[str, ActorSpec]:
        """Return the clustering actor: it embeds (``where: actor``) and clusters the training set every epoch."""
        from pipeline.clustering.actor import ClusteringActor

        params: HcscConfig = config.method  # type: ignore[assignment]
        world_size = max(config.ray.num_workers, 1)
        network_factory = functools.partial(
            build_encoder, config.model, cls.batch_norm(config, world_size), config.data.image_size
        )
        actor = ActorSpec(
            ClusteringActor,
            kwargs={
                "data": config.data,
                "network_factory": network_factory,
                "sizes": params.hierarchy,
                "scale": params.hierarchy_scale,
                "temperature": params.temperature,
                "settings": params.clustering,
            },
            num_cpus=params.clustering.num_cpus,
            num_gpus=params.clustering.num_gpus,
            # Every rank may wait on a result while rank 0 submits the next job.
            max_concurrency=world_size + 2,
        )
        return {"clustering": actor}

    def on_epoch_start(self, context: EpochContext) -> None:
        """Submit this epoch's clustering job and install the hierarchy the epoch trains with (none in warm-up)."""
        params = self.params
        overlap = params.clustering.overlap
        self.prototypes, self._report = None, EpochReport()
        # With overlap the last warm-up epoch already starts the first job, so the first HCSC epoch need not wait.
        first_submission = params.warmup_epochs - 1 if overlap else params.warmup_epochs
        if context.epoch < first_submission:
            return
        import ray

        actor = context.resource("clustering")
        started = time.perf_counter()
        previous = self._submitted
        self._submit(context, actor, context.epoch)
        if context.epoch < params.warmup_epochs:
            self._report = EpochReport({"clustering/wait_s": time.perf_counter() - started})
            return
        key = context.epoch - 1 if overlap and previous == context.epoch - 1 else context.epoch
        result: ClusteringResult = ray.get(actor.result.remote(key))
        self.prototypes = Prototypes.from_hierarchy(result.hierarchy, context.device)
        self._report = self._describe(result, context.epoch, time.perf_counter() - started)

    def _submit(self, context: EpochContext, actor: Any, key: int) -> None:
        """Start the clustering job ``key`` on the momentum encoder's current weights (or the workers' embeddings)."""
        import ray

        if self.params.clustering.where == "workers":
            features, indices = context.extract_features(self.momentum_encoder)
            embeddings = context.gather_to_rank0(features, indices)  # [num_train, D] on rank 0, None elsewhere
            if embeddings is not None:
                ray.get(actor.submit_features.remote(key, embeddings.cpu().numpy()))
        elif context.rank == 0:
            weights = {name: value.detach().cpu() for name, value in self.momentum_encoder.state_dict().items()}
            ray.get(actor.submit_weights.remote(key, ray.put(weights)))
        self._submitted = key

    def _describe(self, result: ClusteringResult, epoch: int, waited: float) -> EpochReport:
        """Return the epoch's clustering metrics and its hierarchy summary artifact."""
        hierarchy = result.hierarchy
        metrics = {
            "clustering/seconds": result.seconds,
            "clustering/extract_s": result.extract_seconds,
            "clustering/kmeans_s": hierarchy.seconds,
            "clustering/wait_s": waited,
            "clustering/staleness_epochs": float(epoch - result.key),
        }
        metrics.update({f"clustering/{name}": value for name, value in result.statistics.items()})
        summary = {
            "epoch": epoch + 1,
            "weights_after_epochs": result.key,
            "sizes": hierarchy.sizes,
            "non_empty": [level.non_empty() for level in hierarchy.levels],
            "device": hierarchy.device,
            "kmeans_s": hierarchy.seconds,
            "extract_s": result.extract_seconds,
            "levels": result.tree,
        }
        artifacts = {f"hierarchy/epoch_{epoch + 1:04d}.json": json.dumps(summary, indent=2)}
        pictures = {}
        # The picture of the hierarchy the last epoch trains with, drawn once (rank 0 records it).
        config = self.context.config
        if config.eval.pictures and epoch + 1 == config.train.epochs and self.context.rank == 0 and result.tree:
            title = f"HCSC hierarchy the last epoch ({epoch + 1}) trains with"
            try:
                pictures[f"hierarchy_epoch_{epoch + 1:04d}.png"] = hierarchy_png(result.tree, title)
            except Exception as error:  # noqa: BLE001 - a picture is never worth the run; the JSON holds the same tree
                print(f"warning: the HCSC hierarchy picture could not be drawn ({type(error).__name__}: {error})")
        return EpochReport(metrics, artifacts, pictures)

    def epoch_report(self) -> EpochReport:
        """Return the clustering metrics of this epoch's hierarchy and its sizes as an artifact."""
        return self._report

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return MoCo v2's loss in warm-up, then the instance (ICSC) plus prototype (PCSC) loss."""
        if self.prototypes is None:
            return super().forward(batch, step)
        query = F.normalize(self.online(batch.views["query"]), dim=1)
        key = self.encode_keys(batch.views["key"], step)
        locals_ = self.local_queries(batch)
        self.stage_enqueue(key, batch.labels)
        # Softmaxes over thousands of prototypes and queue entries run in float32 outside autocast.
        with torch.autocast(query.device.type, enabled=False):
            queue = full_precision(self.queue.embeddings)
            return self.selective_losses(
                full_precision(query),
                full_precision(key),
                queue,
                batch.indices,
                [full_precision(view) for view in locals_],
            )

    def selective_losses(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        queue: torch.Tensor,
        indices: torch.Tensor,
        locals_: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``loss`` = ICSC (summed over levels) + PCSC (mean over levels), the two terms and kept fractions.

        With local crops (``locals_``, each ``[B, D]``), as the official multi-crop: each local view adds its
        own ICSC against the same key and queue (with the query's selected negatives when
        ``selection_on_local``) and its own PCSC (its own selection draws), all summed into ``loss``.
        ``pcsc_kept`` is the fraction of the query's negative prototypes kept over the levels below the top
        (1 when the batch's clusters leave no negative to select from).
        """
        params, prototypes = self.params, self.prototypes
        assert prototypes is not None
        clusters = [assignments[indices] for assignments in prototypes.assignments]  # per level [B]
        losses: dict[str, torch.Tensor] = {}
        masks = None
        if params.instance_selection:
            masks = [
                selection_mask(icsc_selection_probs(queue, centroids, concentration, level_clusters), ICSC_CLAMP)
                for centroids, concentration, level_clusters in zip(
                    prototypes.centroids, prototypes.concentration, clusters, strict=True
                )
            ]
            losses["icsc_kept"] = torch.stack([mask.mean() for mask in masks]).mean()
        instance = icsc(query, key, queue, masks, params.temperature)
        # The negative prototypes are those no image of the batch has as its positive: the global batch's
        # clusters (gathered) unless contrast_scope is worker.
        batch_clusters = clusters if params.contrast_scope == "worker" else [concat_all_gather(c) for c in clusters]
        prototype, kept, candidates = self.prototype_loss(query, clusters, batch_clusters)
        loss = instance + prototype
        if locals_:
            local_masks = masks if params.selection_on_local else None
            local_instance = torch.stack([icsc(view, key, queue, local_masks, params.temperature) for view in locals_])
            local_prototype = torch.stack([self.prototype_loss(view, clusters, batch_clusters)[0] for view in locals_])
            losses.update(
                local_instance_loss=local_instance.sum().detach(), local_prototype_loss=local_prototype.sum().detach()
            )
            loss = loss + local_instance.sum() + local_prototype.sum()
        if params.prototype_selection and prototypes.num_levels > 1:
            # Every rank logs the same keys every step; a batch whose clusters cover a level leaves no candidate.
            losses["pcsc_kept"] = kept / candidates if candidates else query.new_ones(())
        losses.update(loss=loss, instance_loss=instance.detach(), prototype_loss=prototype.detach())
        return losses

    def prototype_loss(
        self, query: torch.Tensor, clusters: list[torch.Tensor], batch_clusters: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return PCSC of ``query`` ``[B, D]`` averaged over levels, and the negative prototypes kept of the candidates.

        ``clusters`` are the batch's clusters per level ``[B]``; ``batch_clusters`` those whose prototypes are
        positives somewhere in the batch (the global batch's unless ``contrast_scope`` is worker).
        """
        params, prototypes = self.params, self.prototypes
        assert prototypes is not None
        level_losses: list[torch.Tensor] = []
        kept, candidates = query.new_zeros(()), 0
        for level in range(prototypes.num_levels):  # a handful of levels, never a loop over samples
            negatives = pcsc_negative_ids(batch_clusters[level], prototypes.centroids[level].shape[0])
            mask = None
            if params.prototype_selection and level + 1 < prototypes.num_levels:
                probabilities = pcsc_selection_probs(
                    prototypes.similarity[level], prototypes.concentration[level + 1], clusters[level + 1], negatives
                )
                mask = selection_mask(probabilities, PCSC_CLAMP)
                kept, candidates = kept + mask.sum(), candidates + mask.numel()
            level_losses.append(
                pcsc(
                    query,
                    prototypes.centroids[level],
                    prototypes.concentration[level],
                    clusters[level],
                    negatives,
                    mask,
                )
            )
        return torch.stack(level_losses).mean(), kept, candidates
