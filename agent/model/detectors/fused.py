"""Fused detector: semantic and lexical distances, each calibrated on held-out normals, combined.

No single measure is safe on data nobody tuned for (docs/detectors.md has the table): the kNN
distance in embedding space is best on intents and logs but weak on spam, the seeds' k-means
radius wins on payload-like data and collapses on BGL, and the lexical measures win on spam. This
detector computes several and combines them the way independent tests are combined:

components (``components``, all four by default)
    ``knn``     mean cosine distance to the k nearest normal embeddings (local novelty);
    ``kmeans``  Euclidean distance to the nearest k-means centroid, k by silhouette (the seeds'
                global radius, here with one global threshold: per-cluster radii are what fails
                on logs);
    ``tfidf``   char n-gram TF-IDF distance to the k nearest normal texts (agent.model.detectors.lexical);
    ``unseen``  share of tokens never seen in training (agent.model.detectors.lexical).
calibration of each component
    on the held-out normals (the same split every detector calibrates on): a value ``x`` of
    component ``c`` gets its empirical tail probability ``p_c(x) = (1 + #{held-out >= x}) / (m + 1)``,
    extended past the largest held-out value ``h_c`` by the ratio ``x / h_c``.
fusion (Fisher's method, with the embedding measures voting once)
    evidence ``e_c(x) = -log p_c(x) + log max(1, x / h_c)``;
    ``raw = max(e_knn, e_kmeans) + e_tfidf + e_unseen`` — large when any measure is far in its
    own tail, larger when the embedding and the text agree. knn and k-means are two distances of
    the same vector (local and global), so summing them would count one observation twice; the
    larger one stands for the embedding. Measured over the six dev sets (docs/detectors.md): the
    worst case is 0.029 this way, 0.044 summing all four, 0.023 leaving k-means out — the k-means
    measure is kept for data where it is the one that fires (payload-like traffic). ``raw`` is
    then thresholded like every other detector's measure (the ``1 - target_fpr`` quantile of the
    held-out ``raw``), so score > 1.0 keeps its meaning.

Clusters: with labels, the nearest normal neighbour's class; without, the nearest k-means centroid
(so alerts and grouping still name one); one global threshold either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.defaults import DEFAULT_CALIBRATION_SPLIT
from agent.model.detectors._common import CalibratedDetector, Float64Array, IntArray, LabelArray, Texts
from agent.model.detectors.base import FloatArray
from agent.model.detectors.kmeans import KMeansDetector
from agent.model.detectors.knn import KnnDetector
from agent.model.detectors.lexical import CharNgramNeighbours, UnseenTokens

COMPONENTS = ("knn", "kmeans", "tfidf", "unseen")
#: two views of the same vector: they vote once, with the stronger evidence.
EMBEDDING_MEASURES = ("knn", "kmeans")
#: read from the prepared text: each votes.
TEXT_MEASURES = ("tfidf", "unseen")
#: the scale a measure is compared at when every held-out value is 0 (duplicates of training texts).
_ZERO_SCALE = 1e-6


def tail_evidence(null: Float64Array, values: Float64Array) -> Float64Array:
    """Evidence ``-log p(x) + log max(1, x / max(null))`` per value; ``null``: sorted held-out values.

    ``p(x) = (1 + n(x)) / (m + 1)`` where ``n(x)`` counts the held-out values ``>= x``, taken
    piecewise-linearly between held-out values so that the evidence is continuous in ``x`` (a
    float rounding of ``x`` cannot jump a rank) and, past the largest held-out value ``h``, decays
    as ``n(h) * h / x`` while the ratio term grows. 0 at or below the null's bulk, about
    ``log(m + 1)`` past its maximum, growing with the ratio beyond it.
    """
    m = len(null)
    distinct, first = np.unique(null, return_index=True)
    at_least = np.interp(values, distinct, (m - first).astype(np.float64))
    top = float(distinct[-1])
    ratio = values / top if top > 0 else 1.0 + np.maximum(values, 0.0) / _ZERO_SCALE
    over = values > top
    at_least[over] = at_least[over] / ratio[over]
    return np.asarray(-np.log((1.0 + at_least) / (m + 1.0)) + np.log(np.maximum(ratio, 1.0)), np.float64)


def held_out_evidence(null: Float64Array) -> Float64Array:
    """``tail_evidence`` of each value of the sorted ``null`` against the others (leave one out).

    Scoring the held-out values against a null that contains them would make each one look less
    extreme than a fresh value (its own copy counts as "at least as large"), and the threshold
    set on them would let too many fresh normals through. At a held-out value the count of the
    others ``>=`` it is exact; the largest value is measured against the second largest.
    """
    m = len(null)
    if m < 2:
        return np.zeros(m, dtype=np.float64)
    at_least_others = (m - np.searchsorted(null, null, side="left") - 1).astype(np.float64)
    evidence = -np.log((at_least_others + 1.0) / m)
    second = float(null[-2])
    if null[-1] > second:  # past the others' maximum: the same decay and ratio as tail_evidence
        ratio = null[-1] / second if second > 0 else 1.0 + null[-1] / _ZERO_SCALE
        ties = float(np.sum(null[:-1] == second))
        evidence[-1] = -np.log((1.0 + ties / ratio) / m) + np.log(ratio)
    return np.asarray(evidence, dtype=np.float64)


class FusedDetector(CalibratedDetector):
    """Fisher combination of knn, k-means, char n-gram and unseen-token measures / calibrated threshold."""

    name = "fused"
    uses_texts = True

    def __init__(
        self,
        *,
        components: Sequence[str] = COMPONENTS,
        k: int = 5,
        max_reference: int = 20000,
        max_auto_clusters: int = 10,
        block_size: int = 256,
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
        chosen = tuple(components)
        unknown = [c for c in chosen if c not in COMPONENTS]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise ValueError(f"components must be distinct names from {COMPONENTS}, got {list(chosen)}")
        if k < 1 or max_reference < 1 or block_size < 1:
            raise ValueError("k, max_reference and block_size must be >= 1")
        self.components = chosen
        self.k = int(k)
        self.max_reference = int(max_reference)
        self.max_auto_clusters = int(max_auto_clusters)
        self.block_size = int(block_size)
        self._knn = KnnDetector(k=k, max_reference=max_reference, seed=seed)
        self._kmeans = KMeansDetector(max_auto_clusters=max_auto_clusters, seed=seed)
        self._tfidf: CharNgramNeighbours | None = None
        self._unseen: UnseenTokens | None = None
        self._null: dict[str, Float64Array] = {}

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "components": list(self.components),
            "k": self.k,
            "max_reference": self.max_reference,
            "max_auto_clusters": self.max_auto_clusters,
            "block_size": self.block_size,
        }

    @property
    def n_clusters(self) -> int:
        return 0

    @property
    def cluster_labels(self) -> list[str] | None:
        return self._knn.cluster_labels

    def _fit(self, vectors: FloatArray, labels: LabelArray | None, texts: Texts | None) -> None:
        assert texts is not None  # CalibratedDetector.fit checked uses_texts
        self._knn._fit(vectors, labels, None)
        if "kmeans" in self.components or labels is None:
            self._kmeans._fit(vectors, None, None)
        keep = np.arange(len(texts))
        if len(keep) > self.max_reference:
            keep = np.sort(np.random.default_rng(self.seed).choice(keep, self.max_reference, replace=False))
        reference = [texts[int(i)] for i in keep]
        if "tfidf" in self.components:
            self._tfidf = CharNgramNeighbours.fit(reference, k=self.k, block_size=self.block_size)
        if "unseen" in self.components:
            self._unseen = UnseenTokens.fit(reference)

    def _measures(self, vectors: FloatArray, texts: Texts | None) -> tuple[dict[str, Float64Array], IntArray]:
        assert texts is not None
        measures: dict[str, Float64Array] = {}
        # float64 products: an empirical tail probability is steep where held-out values crowd, so
        # float32 rounding that depends on the batch's shape (BLAS kernels) must not reach it.
        knn_raw, knn_cluster = self._knn._raw(vectors.astype(np.float64), None)
        if "knn" in self.components:
            measures["knn"] = knn_raw
        cluster = knn_cluster
        if self._kmeans.n_clusters:
            km_raw, km_cluster = self._kmeans._raw(vectors, None)
            if "kmeans" in self.components:
                measures["kmeans"] = km_raw
            if self._knn.cluster_labels is None:
                cluster = km_cluster
        if self._tfidf is not None:
            measures["tfidf"] = self._tfidf.distance(texts)
        if self._unseen is not None:
            measures["unseen"] = self._unseen.share(texts)
        return measures, cluster

    def _held_out_raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        measures, cluster = self._measures(vectors, texts)
        self._null = {}
        evidence: dict[str, Float64Array] = {}
        for c in self.components:
            order = np.argsort(measures[c], kind="stable")
            self._null[c] = measures[c][order]
            evidence[c] = np.empty(len(vectors), dtype=np.float64)
            evidence[c][order] = held_out_evidence(self._null[c])
        return self._fuse(evidence, len(vectors)), cluster

    def _raw(self, vectors: FloatArray, texts: Texts | None) -> tuple[Float64Array, IntArray]:
        measures, cluster = self._measures(vectors, texts)
        evidence = {c: tail_evidence(self._null[c], measures[c]) for c in self.components}
        return self._fuse(evidence, len(vectors)), cluster

    def _fuse(self, evidence: Mapping[str, Float64Array], n: int) -> Float64Array:
        """The embedding measures' larger evidence plus each text measure's (see module doc)."""
        raw = np.zeros(n, dtype=np.float64)
        embedding = [evidence[c] for c in EMBEDDING_MEASURES if c in evidence]
        if embedding:
            raw += np.max(embedding, axis=0)
        for c in TEXT_MEASURES:
            if c in evidence:
                raw += evidence[c]
        return raw

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        arrays: dict[str, npt.NDArray[Any]] = {f"knn.{k}": v for k, v in self._knn._arrays().items()}
        if self._kmeans.n_clusters:
            arrays |= {f"kmeans.{k}": v for k, v in self._kmeans._arrays().items()}
        if self._tfidf is not None:
            arrays |= {f"tfidf.{k}": v for k, v in self._tfidf.arrays().items()}
        if self._unseen is not None:
            arrays |= {f"unseen.{k}": v for k, v in self._unseen.arrays().items()}
        arrays |= {f"null.{c}": v for c, v in self._null.items()}
        return arrays

    def _meta(self) -> dict[str, Any]:
        return {"kmeans": self._kmeans._meta() if self._kmeans.n_clusters else None}

    def _restore(
        self, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any], directory: Path
    ) -> None:
        def part(prefix: str) -> dict[str, npt.NDArray[Any]]:
            return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}

        self._knn._restore(part("knn"), {}, directory)
        if meta.get("kmeans") is not None:
            self._kmeans._restore(part("kmeans"), meta["kmeans"], directory)
        if "tfidf" in self.components:
            self._tfidf = CharNgramNeighbours.restore(part("tfidf"), k=self.k, block_size=self.block_size)
        if "unseen" in self.components:
            self._unseen = UnseenTokens.restore(part("unseen"))
        self._null = {c: np.asarray(v, dtype=np.float64) for c, v in part("null").items()}
        missing = [c for c in self.components if c not in self._null]
        if missing:
            raise ValueError(f"fused detector: no held-out distribution saved for {missing}")
