"""The detector contract shared by every implementation.

A detector is fitted on vectors of *normal* events only and turns a batch of L2-normalized
embeddings into anomaly scores. Scoring and thresholding are separate concerns: each
implementation computes a raw outlier measure (a distance, a GLOSH score, ...) and the threshold
for it is calibrated afterwards on a held-out split of the normal data to a target false-positive
rate, per cluster where the detector has clusters. The published ``score`` is the raw measure
divided by its threshold, so **higher = more anomalous and score > 1.0 = beyond the calibrated
threshold** for every detector alike; alert consumers and dashboards rely on that.

Texts beside the vectors: ``fit`` and ``score`` also take the *prepared* texts the vectors were
embedded from (one per row). Detectors that read them (``uses_texts``: lexical signals such as
tokens never seen in training) raise ValueError without them; the others ignore them. Because a
score is a function of the prepared text alone (its vector is too), the agent's pattern table,
keyed on the prepared text, stays exact for every detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Scores:
    """Per-event results of ``Detector.score``, all arrays of length n.

    score: float64, raw measure / calibrated threshold; > 1.0 means anomalous.
    cluster: int64, the nearest cluster / class / neighbour group id; -1 where the detector has none.
    distance: float64, the raw outlier measure before thresholding (for alerts and plots).
    """

    score: npt.NDArray[np.float64]
    cluster: npt.NDArray[np.int64]
    distance: npt.NDArray[np.float64]

    @property
    def is_anomaly(self) -> npt.NDArray[np.bool_]:
        return self.score > 1.0


class Detector(ABC):
    """Fit on normal vectors, score new ones. Implementations live one per module next to this."""

    name: ClassVar[str]
    #: whether ``fit`` and ``score`` need the prepared texts (ValueError without them).
    uses_texts: ClassVar[bool] = False

    @abstractmethod
    def fit(
        self,
        normal_vectors: FloatArray,
        labels: npt.NDArray[np.str_] | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Fit on normal vectors (n, dim), holding out part of them to calibrate thresholds.

        ``labels`` (n,) are the normal classes where known; detectors that need them
        (class-centroid) raise ValueError without them, others may use or ignore them.
        ``texts`` (n,) are the prepared texts of the rows (see the module doc).
        """

    @abstractmethod
    def score(self, vectors: FloatArray, texts: Sequence[str] | None = None) -> Scores:
        """Score a batch (n, dim) and its prepared texts; pure, thread-compatible, no state change."""

    @property
    @abstractmethod
    def cluster_labels(self) -> list[str] | None:
        """Human-readable name per cluster id (e.g. the normal class), or None if clusters are unnamed."""

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write parameters into ``directory`` (npy/JSON; pickle only where a library forces it).

        Returns the files written so the bundle can hash them into its manifest.
        """

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Detector:
        """Read what ``save`` wrote. The caller has already verified every file's sha256."""
