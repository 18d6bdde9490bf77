"""Mahalanobis detector: class-conditional Gaussians with one shared, shrunk covariance.

Lee et al. 2018 ("A simple unified framework for detecting out-of-distribution samples"): each
normal class c is a Gaussian N(mu_c, Sigma) with a covariance shared by all classes, estimated on
the within-class residuals ``x - mu_{y(x)}``. With 384-d embeddings and a few thousand events the
sample covariance is ill-conditioned, so Sigma is the Ledoit-Wolf shrinkage estimate
(sklearn.covariance.LedoitWolf), which picks the shrinkage intensity analytically.

Raw measure: the Mahalanobis distance to the nearest class mean,
``min_c sqrt((x - mu_c)^T Sigma^-1 (x - mu_c))``; the cluster is that class. Implemented as a
whitening matrix W = Sigma^(-1/2) (saved as .npy) so scoring is one matrix product and a
nearest-centre search. Without labels all normal vectors form one class (a single Gaussian).
Thresholds are calibrated per class like class-centroid.

Compared with class-centroid it discounts directions in which normal data varies a lot and
penalises movement along directions in which it hardly varies, at a fixed dim x dim cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.covariance import LedoitWolf

from agent.model.detectors._common import (
    CalibratedDetector,
    Float64Array,
    IntArray,
    LabelArray,
    Texts,
    nearest_euclidean,
)
from agent.model.detectors.base import FloatArray

_SINGLE_CLASS = "normal"


class MahalanobisDetector(CalibratedDetector):
    """Mahalanobis distance to the nearest normal-class mean (shared Ledoit-Wolf covariance)."""

    name = "mahalanobis"

    # Fitted state (set by _fit / _restore); only the shared calibration parameters configure it.
    _whitening: Float64Array | None = None
    _white_means: Float64Array | None = None
    _classes: list[str] | None = None
    _labelled = False

    @property
    def n_clusters(self) -> int:
        return 0 if self._white_means is None else len(self._white_means)

    @property
    def cluster_labels(self) -> list[str] | None:
        return list(self._classes) if self._labelled and self._classes is not None else None

    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        x = vectors.astype(np.float64)
        self._labelled = labels is not None
        groups = np.full(len(x), _SINGLE_CLASS) if labels is None else labels
        classes, inverse = np.unique(groups, return_inverse=True)
        means = np.stack([x[inverse == c].mean(axis=0) for c in range(len(classes))])
        covariance = LedoitWolf(assume_centered=True).fit(x - means[inverse]).covariance_
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-12)
        whitening = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
        self._whitening = whitening
        self._white_means = means @ whitening
        self._classes = [str(c) for c in classes]

    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        if self._whitening is None or self._white_means is None:
            raise RuntimeError("mahalanobis detector is not fitted")
        return nearest_euclidean(vectors.astype(np.float64) @ self._whitening, self._white_means)

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        assert self._whitening is not None and self._white_means is not None and self._classes is not None
        return {
            "whitening": self._whitening,
            "white_means": self._white_means,
            "classes": np.asarray(self._classes, dtype=np.str_),
        }

    def _meta(self) -> dict[str, Any]:
        return {"labelled": self._labelled}

    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        self._whitening = np.asarray(arrays["whitening"], dtype=np.float64)
        self._white_means = np.asarray(arrays["white_means"], dtype=np.float64)
        self._classes = [str(c) for c in arrays["classes"]]
        self._labelled = bool(meta["labelled"])
