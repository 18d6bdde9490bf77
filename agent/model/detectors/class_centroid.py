"""Class-centroid detector: one centroid per normal label, thresholded per class.

Raw measure: Euclidean distance to the nearest class centroid (the mean embedding of that normal
class). Each class's threshold (its "radius") is calibrated on that class's held-out vectors, the
split being stratified by label so every class is represented. Needs labels: without them there
are no classes (use kmeans instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.detectors._common import (
    CalibratedDetector,
    Float64Array,
    IntArray,
    LabelArray,
    Texts,
    nearest_euclidean,
)
from agent.model.detectors.base import FloatArray


class ClassCentroidDetector(CalibratedDetector):
    """Distance to the nearest normal-class centroid / that class's calibrated threshold."""

    name = "class-centroid"
    requires_labels = True

    # Fitted state (set by _fit / _restore); only the shared calibration parameters configure it.
    _centers: Float64Array | None = None
    _classes: list[str] | None = None

    @property
    def n_clusters(self) -> int:
        return 0 if self._centers is None else len(self._centers)

    @property
    def cluster_labels(self) -> list[str] | None:
        return None if self._classes is None else list(self._classes)

    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        assert labels is not None  # guaranteed by requires_labels
        classes = np.unique(labels)
        self._centers = np.stack([vectors[labels == c].astype(np.float64).mean(axis=0) for c in classes])
        self._classes = [str(c) for c in classes]

    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        if self._centers is None:
            raise RuntimeError("class-centroid detector is not fitted")
        return nearest_euclidean(vectors, self._centers)

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        assert self._centers is not None and self._classes is not None
        return {"centers": self._centers, "classes": np.asarray(self._classes, dtype=np.str_)}

    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        self._centers = np.asarray(arrays["centers"], dtype=np.float64)
        self._classes = [str(c) for c in arrays["classes"]]
