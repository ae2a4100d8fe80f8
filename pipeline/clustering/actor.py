"""The run-scoped clustering actor: embeds the whole training set and builds HCSC's hierarchy, off the training path.

A plain class (the driver wraps it with ``ray.remote`` through the method's ``ActorSpec``). Jobs are
keyed by the number of epochs trained behind the weights they use. ``submit_weights`` takes the
momentum encoder's state dict and embeds the training set on the actor's own device (eval view,
batched, no grad); ``submit_features`` takes embeddings the training workers extracted. Either
returns at once: one background thread runs the jobs in order while ``result`` calls, from every
rank, wait for the key they need. The actor is threaded (``max_concurrency`` above one) so that
waiting ranks never block a submission. Embedding says progress lines through the run's progress
relay (``progress``, passed by the driver), or prints them when there is none.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.clustering.hierarchy import Hierarchy, hierarchical_kmeans, hierarchy_sizes
from pipeline.clustering.statistics import hierarchy_statistics, hierarchy_tree
from pipeline.config import DataConfig
from pipeline.data.build import build_source
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluation.monitor import extract_features, gather_by_index
from pipeline.methods.hcsc.params import ClusteringConfig
from pipeline.runtime.progress import ImageProgress, ProgressReporter

# Results kept besides the newest: overlap mode reads key e−1 while key e is being computed.
KEPT_RESULTS = 3


@dataclass(frozen=True)
class ClusteringResult:
    """One epoch's hierarchy, the seconds spent embedding and clustering, and its statistics (``level{l}/...``)."""

    key: int
    hierarchy: Hierarchy
    extract_seconds: float
    statistics: dict[str, float]
    # Per level, finest first: each prototype's size, majority class and parent (statistics.hierarchy_tree).
    tree: list[dict[str, list[int]]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Return the actor's total time for this result: embedding plus k-means."""
        return self.extract_seconds + self.hierarchy.seconds


class ClusteringActor:
    """Builds one hierarchy per submitted key and hands it to every rank that asks for that key."""

    def __init__(
        self,
        data: DataConfig,
        network_factory: Callable[[], nn.Module],
        sizes: list[int],
        scale: str,
        temperature: float,
        settings: ClusteringConfig,
        progress: Any | None = None,
    ) -> None:
        self.data, self.network_factory = data, network_factory
        self.progress = ProgressReporter(progress)
        self.sizes, self.scale, self.temperature, self.settings = list(sizes), scale, temperature, settings
        labelled = build_source(data, "train")
        self.labels, self.coarse_labels = labelled.labels, labelled.coarse_labels
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._network: nn.Module | None = None
        self._loader: torch.utils.data.DataLoader | None = None
        self._results: dict[int, ClusteringResult | str] = {}
        self._ready = threading.Condition()
        self._jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clustering")

    def device_name(self) -> str:
        """Return where the actor embeds images (``cpu`` or ``cuda``)."""
        return self.device.type

    def submit_weights(self, key: int, weights: dict[str, torch.Tensor]) -> None:
        """Queue a job that embeds the training set with ``weights`` and clusters it as ``key``; return at once."""
        self._schedule(key, lambda: self._embed(key, weights))

    def submit_features(self, key: int, features: np.ndarray) -> None:
        """Queue a job that clusters the workers' embeddings ``features [n, D]`` as ``key``; return at once."""
        self._schedule(key, lambda: np.asarray(features, dtype=np.float32))

    def result(self, key: int) -> ClusteringResult:
        """Return the result for ``key``, waiting for it; RuntimeError if its job failed, TimeoutError if none came."""
        deadline = time.monotonic() + self.settings.timeout_s
        with self._ready:
            while key not in self._results:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no hierarchy for key {key} after {self.settings.timeout_s:.0f} s "
                        f"(method.clustering.timeout_s); keys held: {sorted(self._results)}"
                    )
                self._ready.wait(remaining)
            value = self._results[key]
        if isinstance(value, str):
            raise RuntimeError(f"clustering for key {key} failed in the actor:\n{value}")
        return value

    def _schedule(self, key: int, features: Callable[[], np.ndarray]) -> None:
        """Drop any result held for ``key`` (it is being rebuilt) and queue its job."""
        with self._ready:
            self._results.pop(key, None)
        self._jobs.submit(self._run, key, features)

    def _run(self, key: int, features: Callable[[], np.ndarray]) -> None:
        """Compute and publish the result for ``key`` (or the failure's traceback), waking every waiting rank."""
        value: ClusteringResult | str
        try:
            started = time.perf_counter()
            points = features()
            extract_seconds = time.perf_counter() - started
            sizes = hierarchy_sizes(self.sizes, points.shape[0], self.scale)
            hierarchy = hierarchical_kmeans(
                points,
                sizes,
                niter=self.settings.niter,
                nredo=self.settings.nredo,
                seed=self.settings.seed,
                temperature=self.temperature,
            )
            statistics = hierarchy_statistics(hierarchy, self.labels, self.coarse_labels)
            tree = hierarchy_tree(hierarchy, self.labels)
            value = ClusteringResult(key, hierarchy, extract_seconds, statistics, tree)
        except Exception:  # noqa: BLE001 - every failure must reach the waiting ranks, not die in this thread
            value = traceback.format_exc()
        with self._ready:
            self._results[key] = value
            for old in sorted(self._results)[:-KEPT_RESULTS]:
                del self._results[old]
            self._ready.notify_all()

    @torch.no_grad()
    def _embed(self, key: int, weights: dict[str, torch.Tensor]) -> np.ndarray:
        """Return the normalised embeddings ``[n, D]`` of the whole training set under ``weights`` (eval view)."""
        if self._network is None:
            self._network = self.network_factory().to(self.device)
            source = build_source(self.data, "train", transform=build_view(EVAL_VIEW, self.data))
            self._loader = torch.utils.data.DataLoader(
                source, batch_size=self.settings.batch_size, num_workers=self.data.num_workers
            )
        self._network.load_state_dict(weights)
        progress = ImageProgress(self.progress.say, f"  clustering after {key} epochs: embedded", len(self.labels))
        features, indices = extract_features(self._network, self._loader, self.device, progress=progress)
        return gather_by_index(features, indices, len(self.labels)).cpu().numpy()
