"""The fit/calibrate/score/save skeleton every detector here shares.

``CalibratedDetector.fit`` validates the input, splits off the held-out part of the normal
vectors (seeded, stratified by label where labels are given), lets the subclass fit on the rest,
scores the held-out part with the subclass's raw measure and calibrates thresholds on it
(``calibration.calibrate``). ``score`` is raw / threshold of the event's cluster. Subclasses only
implement the raw measure, which keeps "how far from normal" and "how far is too far" apart.

Persistence: ``detector.json`` (name, format, constructor config, dim, thresholds, subclass
metadata) plus one ``<name>.npy`` per array, written with ``allow_pickle=False`` and read the same
way, so loading a model file can never execute code (hdbscan adds its own pickled clusterer).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from agent.model.defaults import DEFAULT_CALIBRATION_SPLIT
from agent.model.detectors.base import Detector, FloatArray, Scores
from agent.model.detectors.calibration import (
    DEFAULT_FLOOR,
    DEFAULT_HOLDOUT_FRACTION,
    Thresholds,
    calibrate,
    check_calibration_split,
    check_target_fpr,
    holdout_split,
)

META_FILE = "detector.json"
FORMAT_VERSION = 1

Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
LabelArray = npt.NDArray[np.str_]
Texts = Sequence[str]


def as_vectors(vectors: npt.ArrayLike, dim: int | None = None) -> FloatArray:
    """Validate a batch of embeddings: 2-D, finite, ``dim`` columns if given; float32 copy-free."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors (n, dim), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"vectors have dimension {array.shape[1]} but the detector was fitted on dimension {dim}; "
            "use the embedder the model bundle was trained with"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("vectors contain NaN or infinity")
    return array


def as_texts(texts: Sequence[str] | None, n: int, *, name: str) -> list[str]:
    """The prepared texts a text-aware detector needs, as a list of n strings; ValueError if
    missing or mis-sized. Detectors that do not read texts never look at them (no cost per batch)."""
    if texts is None:
        raise ValueError(f"the {name} detector reads the prepared texts: pass texts= with the vectors")
    out = list(texts)
    if len(out) != n or not all(isinstance(t, str) for t in out):
        raise ValueError(f"texts must be {n} strings, one per vector, got {len(out)} items")
    return out


def as_labels(labels: npt.ArrayLike | None, n: int) -> LabelArray | None:
    """Labels as a (n,) str array, or None."""
    if labels is None:
        return None
    array = np.asarray(labels).astype(str)
    if array.shape != (n,):
        raise ValueError(f"labels must have one entry per vector ({n}), got shape {array.shape}")
    return array


class CalibratedDetector(Detector):
    """Shared fit/score/save logic; subclasses provide the raw outlier measure.

    Constructor arguments common to all: ``target_fpr`` (false-positive rate the thresholds are
    calibrated to), ``holdout_fraction`` (share of the normal vectors held out for calibration),
    ``calibration_split`` (``"random"`` share or the input's ``"tail"``, see
    ``calibration.holdout_split``), ``seed`` (every random choice: split, k-means init, subsampling).
    """

    #: whether ``fit`` needs labels (ValueError without them).
    requires_labels: ClassVar[bool] = False
    #: smallest threshold calibration may produce (see calibration.DEFAULT_FLOOR).
    threshold_floor: ClassVar[float] = DEFAULT_FLOOR

    def __init__(
        self,
        *,
        target_fpr: float = 0.01,
        holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
        calibration_split: str = DEFAULT_CALIBRATION_SPLIT,
        seed: int = 0,
    ) -> None:
        self.target_fpr = check_target_fpr(target_fpr)
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be between 0 and 1 (exclusive), got {holdout_fraction}")
        self.holdout_fraction = float(holdout_fraction)
        self.calibration_split = check_calibration_split(calibration_split)
        self.seed = int(seed)
        self._dim: int | None = None
        self._thresholds: Thresholds | None = None

    # -- subclass interface -------------------------------------------------------------------

    @abstractmethod
    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        """Fit the raw measure on the fit part of the normal vectors (and their texts, if given)."""

    @abstractmethod
    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        """Raw outlier measure (higher = more anomalous, >= 0) and cluster id (-1: none) per vector."""

    @property
    @abstractmethod
    def n_clusters(self) -> int:
        """Number of clusters with their own threshold (0: one global threshold)."""

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serializable) that recreate this detector unfitted.

        These are the ones every calibrated detector shares; a subclass with parameters of its own
        adds them (``super().config() | {...}``).
        """
        return {
            "target_fpr": self.target_fpr,
            "holdout_fraction": self.holdout_fraction,
            "calibration_split": self.calibration_split,
            "seed": self.seed,
        }

    @abstractmethod
    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Fitted arrays to save as ``<key>.npy`` (numeric or str dtype, never object)."""

    @abstractmethod
    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        """Set fitted state from what ``_arrays``/``_meta``/``_save_extra`` wrote."""

    def _meta(self) -> dict[str, Any]:
        """Extra JSON metadata to save (default none)."""
        return {}

    def _held_out_raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        """The raw measure of the held-out part, which the thresholds are calibrated on (default: ``_raw``).

        A detector that also learns from the held-out part (fused: each measure's distribution)
        does so here and returns each point's raw measure as if that point had not been seen,
        so the threshold is not set on optimistic scores.
        """
        return self._raw(vectors, texts)

    def _save_extra(self, directory: Path) -> list[Path]:
        """Files other than npy/JSON (only hdbscan's pickled clusterer)."""
        return []

    def _threshold_prior(self, raw: Float64Array, cluster: IntArray) -> Float64Array | None:
        """Per-cluster shrinkage target for calibration (default: the global threshold)."""
        return None

    def _strata(self, vectors: FloatArray, labels: LabelArray | None) -> npt.NDArray[Any] | None:
        """What the held-out split is stratified by (default: the labels, if any)."""
        return labels

    # -- the contract ---------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self._thresholds is not None

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError(f"{self.name} detector is not fitted: call fit() or load() first")
        return self._dim

    @property
    def thresholds(self) -> Thresholds:
        if self._thresholds is None:
            raise RuntimeError(f"{self.name} detector is not fitted: call fit() or load() first")
        return self._thresholds

    def fit(
        self,
        normal_vectors: FloatArray,
        labels: npt.NDArray[np.str_] | Sequence[str] | None = None,
        texts: Texts | None = None,
    ) -> None:
        vectors = as_vectors(normal_vectors)
        label_array = as_labels(labels, len(vectors))
        text_list = as_texts(texts, len(vectors), name=self.name) if self.uses_texts else None
        if self.requires_labels and label_array is None:
            raise ValueError(
                f"the {self.name} detector needs the normal class of every training vector "
                "(train with --label-field and --normal-labels)"
            )
        fit_idx, held_idx = holdout_split(
            len(vectors),
            fraction=self.holdout_fraction,
            seed=self.seed,
            strata=self._strata(vectors, label_array),
            order=self.calibration_split,
        )
        self._dim = int(vectors.shape[1])
        fit_texts = None if text_list is None else [text_list[i] for i in fit_idx]
        held_texts = None if text_list is None else [text_list[i] for i in held_idx]
        self._fit(vectors[fit_idx], None if label_array is None else label_array[fit_idx], fit_texts)
        raw, cluster = self._held_out_raw(vectors[held_idx], held_texts)
        self._thresholds = calibrate(
            raw,
            self.target_fpr,
            cluster=cluster,
            n_clusters=self.n_clusters,
            prior=self._threshold_prior(raw, cluster),
            floor=self.threshold_floor,
        )

    def score(self, vectors: FloatArray, texts: Texts | None = None) -> Scores:
        thresholds = self.thresholds
        batch = as_vectors(vectors, self.dim)
        text_list = as_texts(texts, len(batch), name=self.name) if self.uses_texts else None
        if len(batch) == 0:
            return Scores(np.empty(0, np.float64), np.empty(0, np.int64), np.empty(0, np.float64))
        raw, cluster = self._raw(batch, text_list)
        return Scores(score=raw / thresholds.for_clusters(cluster), cluster=cluster, distance=raw)

    def save(self, directory: Path) -> list[Path]:
        thresholds = self.thresholds
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        arrays = self._arrays()
        for key, array in arrays.items():
            if array.dtype == object:
                raise TypeError(f"array {key!r} has dtype object, which cannot be saved without pickle")
            path = directory / f"{key}.npy"
            np.save(path, array, allow_pickle=False)
            written.append(path)
        written += self._save_extra(directory)
        meta = {
            "detector": self.name,
            "format": FORMAT_VERSION,
            "dim": self.dim,
            "config": self.config(),
            "thresholds": thresholds.to_dict(),
            "arrays": sorted(arrays),
            "extra": self._meta(),
        }
        meta_path = directory / META_FILE
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(meta_path)
        return written

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"{meta_path} is missing: not a saved detector directory") from exc
        if meta.get("detector") != cls.name:
            raise ValueError(f"{meta_path} holds a {meta.get('detector')!r} detector, not {cls.name!r}")
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format {meta.get('format')!r}; this version reads {FORMAT_VERSION}: "
                "retrain the model"
            )
        detector = cls(**meta["config"])
        arrays = {key: np.load(directory / f"{key}.npy", allow_pickle=False) for key in meta["arrays"]}
        detector._dim = int(meta["dim"])
        detector._thresholds = Thresholds.from_dict(meta["thresholds"])
        detector._restore(arrays, meta["extra"], directory)
        return detector


def nearest_euclidean(
    vectors: npt.NDArray[np.floating[Any]], centers: Float64Array
) -> tuple[Float64Array, IntArray]:
    """Euclidean distance to, and index of, the nearest row of ``centers`` (float64, batched)."""
    x = vectors.astype(np.float64)
    sq = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ centers.T) + (centers * centers).sum(axis=1)[None, :]
    idx = sq.argmin(axis=1).astype(np.int64)
    best = np.sqrt(np.maximum(sq[np.arange(len(x)), idx], 0.0))
    return best, idx
