"""Detectors: fit on normal embeddings, score new ones (higher = more anomalous, > 1.0 = beyond threshold).

``DETECTORS`` maps each CLI name (``train --detector``) to its class; ``create_detector`` builds
an unfitted one with keyword parameters, and ``load_detector`` reads a saved one by name. Each
class's docstring and docs/detectors.md say what it measures and when to choose it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.model.detectors.base import Detector, Scores
from agent.model.detectors.class_centroid import ClassCentroidDetector
from agent.model.detectors.fused import FusedDetector
from agent.model.detectors.hdbscan_detector import HdbscanDetector
from agent.model.detectors.kmeans import KMeansDetector
from agent.model.detectors.knn import KnnDetector
from agent.model.detectors.knn_vote import KnnVoteDetector
from agent.model.detectors.mahalanobis import MahalanobisDetector

DETECTORS: dict[str, type[Detector]] = {
    KMeansDetector.name: KMeansDetector,
    ClassCentroidDetector.name: ClassCentroidDetector,
    HdbscanDetector.name: HdbscanDetector,
    KnnDetector.name: KnnDetector,
    KnnVoteDetector.name: KnnVoteDetector,
    MahalanobisDetector.name: MahalanobisDetector,
    FusedDetector.name: FusedDetector,
}


def _detector_class(name: str) -> type[Detector]:
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown detector {name!r}; choose one of: {', '.join(sorted(DETECTORS))}"
        ) from None


def create_detector(name: str, **params: Any) -> Detector:
    """An unfitted detector by CLI name; ``params`` are its constructor keywords (e.g. target_fpr)."""
    return _detector_class(name)(**params)


def load_detector(name: str, directory: Path) -> Detector:
    """Read a detector that ``save`` wrote into ``directory`` (its files already hash-verified)."""
    return _detector_class(name).load(directory)


__all__ = ["DETECTORS", "Detector", "Scores", "create_detector", "load_detector"]
