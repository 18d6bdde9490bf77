"""HDBSCAN detector: GLOSH outlier score of new points against a density clustering of normal data.

Pipeline: PCA to ``n_components`` (16) dimensions, plus one coordinate holding the event's
distance from the PCA subspace (so what the projection drops still counts). Low dimension because
HDBSCAN's prediction cost grows with it (approximate_predict on 384-d vectors costs about as much
as embedding the event; on 16-d it is ~100x cheaper) and densities mean little in 384-d. The
projection (mean and components) is saved as .npy and applied at score time. Then
``hdbscan.HDBSCAN(prediction_data=True)`` on the projected fit vectors; new points get
``hdbscan.prediction.approximate_predict`` (cluster label, -1 = noise) and
``approximate_predict_scores`` (GLOSH, 0 = core of a cluster, -> 1 = outlier).

Raw measure: for a point predicted into a cluster, its GLOSH score in [0, 1] (NaN, which the
library returns inside clusters of exact duplicates, counts as 0); for a point predicted noise,
``1 + d / (1 + d)`` with d its distance to the nearest fit point in the projected space, so every
noise point ranks above every clustered point ("noise = anomalous") and noise is still ordered by
how far from normal data it lies. Thresholds are calibrated on held-out normal points as
elsewhere: when held-out noise is rarer than ``target_fpr`` every noise point is beyond the
threshold; when the clustering leaves more normal points as noise (log data with many one-off
templates), the threshold moves into the noise range so the false-positive rate stays at its
target. Per-cluster thresholds as elsewhere (noise uses the global one).

This is the one detector whose saved state includes a pickle (the fitted clusterer: its condensed
tree and prediction data have no array-only form in the library). The bundle verifies the file's
sha256 before anything unpickles it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hdbscan
import hdbscan.prediction
import numpy as np
import numpy.typing as npt
from sklearn.decomposition import PCA

from agent.model.defaults import DEFAULT_CALIBRATION_SPLIT
from agent.model.detectors._common import CalibratedDetector, Float64Array, IntArray, LabelArray, Texts
from agent.model.detectors.base import FloatArray

CLUSTERER_FILE = "clusterer.pkl"


class HdbscanDetector(CalibratedDetector):
    """GLOSH (+1 for noise) on a 16-d PCA projection / calibrated threshold."""

    name = "hdbscan"

    def __init__(
        self,
        *,
        n_components: int = 16,
        min_cluster_size: int | None = None,
        min_samples: int | None = 5,
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
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if min_cluster_size is not None and min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
        if min_samples is not None and min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.n_components = int(n_components)
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self._mean: Float64Array | None = None
        self._components: Float64Array | None = None
        self._clusterer: hdbscan.HDBSCAN | None = None
        self._n_found = 0

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "n_components": self.n_components,
            "min_cluster_size": self.min_cluster_size,
            "min_samples": self.min_samples,
        }

    @property
    def n_clusters(self) -> int:
        return self._n_found

    @property
    def cluster_labels(self) -> list[str] | None:
        return None

    def effective_min_cluster_size(self, n: int) -> int:
        """``min_cluster_size`` or, by default, 1 % of the fit vectors bounded to [5, 100].

        ``min_samples`` defaults to 5 rather than HDBSCAN's min_cluster_size: diverse normal text
        (chat messages) is otherwise almost all noise, and noise is what this detector flags.
        """
        if self.min_cluster_size is not None:
            return self.min_cluster_size
        return int(min(100, max(5, round(0.01 * n))))

    def _project(self, vectors: FloatArray) -> Float64Array:
        """PCA coordinates plus the distance from the PCA subspace as one more coordinate.

        Without the residual, an event that differs from normal data only in directions the
        projection drops would land inside a cluster and look perfectly normal.
        """
        if self._mean is None or self._components is None:
            raise RuntimeError("hdbscan detector is not fitted")
        centred = vectors.astype(np.float64) - self._mean
        coords = centred @ self._components.T
        residual = np.linalg.norm(centred - coords @ self._components, axis=1)
        return np.concatenate([coords, residual[:, None]], axis=1)

    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        n_components = min(self.n_components, vectors.shape[1], len(vectors))
        pca = PCA(n_components=n_components, svd_solver="full").fit(vectors.astype(np.float64))
        self._mean = np.asarray(pca.mean_, dtype=np.float64)
        self._components = np.asarray(pca.components_, dtype=np.float64)
        projected = self._project(vectors)
        min_cluster_size = max(2, min(self.effective_min_cluster_size(len(projected)), len(projected)))
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=self.min_samples,
            prediction_data=True,
        ).fit(projected)
        n_found = int(np.max(clusterer.labels_)) + 1
        if n_found == 0:
            raise ValueError(
                "HDBSCAN found no cluster in the normal data (every point is noise at "
                f"min_cluster_size={min_cluster_size}); give a smaller min_cluster_size or use knn"
            )
        self._clusterer = clusterer
        self._n_found = n_found

    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        if self._clusterer is None:
            raise RuntimeError("hdbscan detector is not fitted")
        projected = self._project(vectors)
        labels, _ = hdbscan.prediction.approximate_predict(self._clusterer, projected)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 inside duplicate clusters: handled below
            glosh = np.asarray(
                hdbscan.prediction.approximate_predict_scores(self._clusterer, projected), dtype=np.float64
            )
        cluster = np.asarray(labels, dtype=np.int64)
        # GLOSH is 0/0 = NaN for points of a cluster whose density is infinite: exact duplicates
        # (a log template repeated hundreds of times) have core distance 0. Those are the most
        # normal points there are, so NaN means 0 for a clustered point.
        glosh = np.clip(np.where(np.isnan(glosh), 0.0, glosh), 0.0, 1.0)
        # Noise ranks above every clustered point and, among itself, by the distance to the
        # nearest fit point (GLOSH is NaN or saturated there, and ties at the top would leave the
        # calibrated threshold nothing to separate).
        nearest, _ = self._clusterer.prediction_data_.tree.query(projected, k=1)
        far = nearest[:, 0] / (1.0 + nearest[:, 0])
        raw = np.where(cluster >= 0, glosh, 1.0 + far)
        return raw.astype(np.float64), cluster

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        assert self._mean is not None and self._components is not None
        return {"pca_mean": self._mean, "pca_components": self._components}

    def _meta(self) -> dict[str, Any]:
        return {"n_clusters_found": self._n_found, "clusterer_file": CLUSTERER_FILE}

    def _save_extra(self, directory: Path) -> list[Path]:
        path = directory / CLUSTERER_FILE
        with path.open("wb") as fh:
            pickle.dump(self._clusterer, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return [path]

    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        self._mean = np.asarray(arrays["pca_mean"], dtype=np.float64)
        self._components = np.asarray(arrays["pca_components"], dtype=np.float64)
        self._n_found = int(meta["n_clusters_found"])
        # The bundle has verified this file's sha256 against its manifest before load() runs.
        with (directory / CLUSTERER_FILE).open("rb") as fh:
            self._clusterer = pickle.load(fh)
