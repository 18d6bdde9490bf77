"""k-means detector: distance to the nearest centroid, thresholded per cluster (the seeds' method).

Raw measure: Euclidean distance from the event's embedding to its nearest k-means centroid
(embeddings are unit vectors, so this is a monotone function of cosine distance to the centroid
direction, scaled by how spread the cluster is). Each centroid keeps the ``radius_percentile``
percentile of its own training distances (the seeds' "radius"); the radius, scaled by the global
ratio of held-out to training distance (training points pulled their centroid towards themselves),
is the prior that a cluster's calibrated threshold is shrunk towards when it had few held-out points.

Choosing k: ``n_clusters`` if given; otherwise the number of normal classes when labels are given
(the seeds' choice: one centroid for a single "normal" label); otherwise the best silhouette score
for k in 2..``max_auto_clusters`` on a seeded subsample of at most 2,000 fit vectors (cosine
metric), which picks the coarse structure of the data without a user-tuned k.

Caveat (measured on BGL, docs/detectors.md): per-cluster thresholds assume every cluster's spread
seen in training holds in production. A cluster made of one repeated log template has a tiny
threshold, so a new but harmless line whose nearest centroid is that cluster scores far above 1.
With several clusters on log data prefer knn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from agent.model.defaults import DEFAULT_CALIBRATION_SPLIT
from agent.model.detectors._common import (
    CalibratedDetector,
    Float64Array,
    IntArray,
    LabelArray,
    Texts,
    nearest_euclidean,
)
from agent.model.detectors.base import FloatArray

_SILHOUETTE_SAMPLE = 2000


class KMeansDetector(CalibratedDetector):
    """Nearest k-means centroid distance / per-cluster calibrated threshold."""

    name = "kmeans"

    def __init__(
        self,
        *,
        n_clusters: int | None = None,
        max_auto_clusters: int = 10,
        radius_percentile: float = 99.0,
        n_init: int = 4,
        target_fpr: float = 0.01,
        holdout_fraction: float = 0.2,
        calibration_split: str = DEFAULT_CALIBRATION_SPLIT,
        seed: int = 0,
    ) -> None:
        super().__init__(
            target_fpr=target_fpr,
            holdout_fraction=holdout_fraction,
            calibration_split=calibration_split,
            seed=seed,
        )
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if max_auto_clusters < 2:
            raise ValueError(f"max_auto_clusters must be >= 2, got {max_auto_clusters}")
        if not 0.0 < radius_percentile <= 100.0:
            raise ValueError(f"radius_percentile must be in (0, 100], got {radius_percentile}")
        self.n_clusters_param = n_clusters
        self.max_auto_clusters = int(max_auto_clusters)
        self.radius_percentile = float(radius_percentile)
        self.n_init = int(n_init)
        self._centers: Float64Array | None = None
        self._radius: Float64Array | None = None
        self._fit_scale = 1.0

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "n_clusters": self.n_clusters_param,
            "max_auto_clusters": self.max_auto_clusters,
            "radius_percentile": self.radius_percentile,
            "n_init": self.n_init,
        }

    @property
    def n_clusters(self) -> int:
        return 0 if self._centers is None else len(self._centers)

    @property
    def cluster_labels(self) -> list[str] | None:
        return None

    @property
    def centers(self) -> Float64Array:
        if self._centers is None:
            raise RuntimeError("kmeans detector is not fitted")
        return self._centers

    def _choose_k(self, vectors: FloatArray, labels: LabelArray | None) -> int:
        n_distinct = len(np.unique(vectors, axis=0))
        if self.n_clusters_param is not None:
            return min(self.n_clusters_param, n_distinct)
        if labels is not None:
            return min(len(np.unique(labels)), n_distinct)
        upper = min(self.max_auto_clusters, n_distinct - 1)
        if upper < 2:
            return 1
        rng = np.random.default_rng(self.seed)
        sample = (
            vectors
            if len(vectors) <= _SILHOUETTE_SAMPLE
            else vectors[rng.choice(len(vectors), _SILHOUETTE_SAMPLE, replace=False)]
        )
        best_k, best_score = 1, -np.inf
        for k in range(2, upper + 1):
            assignment = KMeans(k, n_init=2, random_state=self.seed).fit_predict(sample)
            if len(np.unique(assignment)) < 2:
                continue
            score = float(silhouette_score(sample, assignment, metric="cosine"))
            if score > best_score:
                best_k, best_score = k, score
        return best_k

    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        k = self._choose_k(vectors, labels)
        model = KMeans(k, n_init=self.n_init, random_state=self.seed).fit(vectors.astype(np.float64))
        centers = np.asarray(model.cluster_centers_, dtype=np.float64)
        distance, assignment = nearest_euclidean(vectors, centers)
        radius = np.empty(len(centers), dtype=np.float64)
        for c in range(len(centers)):
            members = distance[assignment == c]
            radius[c] = np.percentile(members, self.radius_percentile) if members.size else np.nan
        global_radius = float(np.percentile(distance, self.radius_percentile))
        self._centers = centers
        self._radius = np.where(np.isfinite(radius), radius, global_radius)
        self._fit_scale = global_radius

    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        return nearest_euclidean(vectors, self.centers)

    def _threshold_prior(self, raw: Float64Array, cluster: IntArray) -> Float64Array | None:
        # Training distances are optimistic; scale every cluster's radius by how much larger the
        # held-out distances are overall, so the prior is on the held-out scale.
        assert self._radius is not None
        held_global = float(np.percentile(raw, self.radius_percentile))
        ratio = held_global / self._fit_scale if self._fit_scale > 0 else 1.0
        return self._radius * ratio

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        assert self._radius is not None
        return {"centers": self.centers, "radius": self._radius}

    def _meta(self) -> dict[str, Any]:
        return {"fit_scale": self._fit_scale}

    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        self._centers = np.asarray(arrays["centers"], dtype=np.float64)
        self._radius = np.asarray(arrays["radius"], dtype=np.float64)
        self._fit_scale = float(meta["fit_scale"])
