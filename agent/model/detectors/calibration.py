"""Threshold calibration shared by every detector: held-out split, quantile thresholds, shrinkage.

Every detector fits on part of the normal vectors and scores the rest (the *held-out* split) with
its raw outlier measure; the threshold is the ``1 - target_fpr`` quantile of those held-out raw
scores, so on fresh normal data about ``target_fpr`` of events score above 1.0. Scores of the
training points themselves would be optimistic (a point is its own nearest neighbour, k-means
pulled its centroid towards it), which is why the threshold never comes from them.

Per-cluster thresholds and shrinkage
------------------------------------
Where a detector has clusters (k-means centroids, normal classes, HDBSCAN clusters), each held-out
point counts for the cluster it is assigned to at scoring time, and each cluster gets its own
quantile. A quantile from few points is noisy (with fewer than ``1 / target_fpr`` points the
99th percentile is simply the maximum), so each cluster's threshold is shrunk towards a prior in
log space::

    w_c = m_c / (m_c + prior_strength)        # m_c = held-out points in cluster c
    log t_c = w_c * log q_c + (1 - w_c) * log prior_c

``prior_strength`` defaults to ``1 / target_fpr`` (100 points at 1 %): a cluster needs as many
held-out points as it takes to see one expected false positive before its own quantile gets half
the weight. The prior is the global held-out quantile unless the detector supplies a better one
(k-means scales each cluster's training-distance radius by the global held-out/training ratio).
A cluster with no held-out point gets its prior. Log space because distances of tight and loose
clusters differ by factors, not offsets.

Thresholds are floored at ``floor`` (> 0) so that a raw score of exactly 0 everywhere (duplicate
log lines) cannot produce a zero threshold and infinite scores.

Evidence and drift
------------------
``tail_evidence`` / ``held_out_evidence`` turn a measure into ``-log`` of its tail probability
among held-out normals (leave-one-out for the held-out values themselves): the common currency
in which the fused detector adds its measures and the value view (agent.model.values) adds a
pattern's score to its values' evidence. ``drift_margin`` measures how much higher a threshold
had to be to hold the target one time slice later in the training data (bench/quality.py's
forward chain; docs/detectors.md, "Calibration under drift and its limits": on the dev logs no
margin learned this way anticipated the drift, so none is applied).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.defaults import CALIBRATION_SPLITS

IntArray = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]

DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_FLOOR = 1e-6


def check_target_fpr(target_fpr: float) -> float:
    """Validate a target false-positive rate (0 < fpr < 1) and return it as float."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be between 0 and 1 (exclusive), got {target_fpr}")
    return float(target_fpr)


# How the held-out part is chosen: a seeded random share, or the *last* share in input order
# (for logs input order is time, so the threshold is set on the latest traffic the model saw).


def check_calibration_split(split: str) -> str:
    """Validate a calibration split name (one of ``CALIBRATION_SPLITS``)."""
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"calibration split must be one of {', '.join(CALIBRATION_SPLITS)}, got {split!r}")
    return split


def holdout_split(
    n: int,
    *,
    fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
    strata: npt.ArrayLike | None = None,
    order: str = "random",
) -> tuple[IntArray, IntArray]:
    """Split of ``range(n)`` into (fit indices, held-out indices), both sorted.

    ``order="random"``: a seeded random share; ``"tail"``: the last share in index (input) order.
    With ``strata`` (one label per point) every stratum is split in the same proportion, so each
    class / cluster is represented in calibration (with ``"tail"``: each stratum's last share); a
    stratum of one point stays in the fit part. At least one point always lands on each side
    (ValueError for n < 2).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    check_calibration_split(order)
    if n < 2:
        raise ValueError(f"need at least 2 normal vectors to fit and calibrate, got {n}")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else _groups(np.asarray(strata), n)
    held: list[IntArray] = []
    for members in groups:
        m = len(members)
        take = round(fraction * m) if m > 1 else 0
        chosen = members[m - take :] if order == "tail" else rng.permutation(members)[:take]
        held.append(chosen.astype(np.int64))
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    if len(held_idx) == 0:
        held_idx = np.array([n - 1 if order == "tail" else rng.integers(n)], dtype=np.int64)
    if len(held_idx) == n:
        held_idx = held_idx[1:]
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx


def _groups(strata: npt.NDArray[Any], n: int) -> list[IntArray]:
    if strata.shape != (n,):
        raise ValueError(f"strata must have one entry per vector ({n}), got shape {strata.shape}")
    _, inverse = np.unique(strata, return_inverse=True)
    return [np.flatnonzero(inverse == g).astype(np.int64) for g in range(int(inverse.max()) + 1)]


def quantile_threshold(raw: npt.ArrayLike, target_fpr: float, *, floor: float = DEFAULT_FLOOR) -> float:
    """The ``1 - target_fpr`` quantile of ``raw`` (linear interpolation), at least ``floor``."""
    values = np.asarray(raw, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot calibrate a threshold on zero held-out scores")
    if not np.all(np.isfinite(values)):
        raise ValueError("held-out scores contain NaN or infinity")
    return max(float(np.quantile(values, 1.0 - target_fpr, method="linear")), floor)


@dataclass(frozen=True)
class Thresholds:
    """Calibrated thresholds: one global, and one per cluster id (empty if the detector has none).

    ``holdout_counts[c]`` is how many held-out points cluster ``c`` had (what its shrinkage weight
    came from); kept for the training summary and docs, not needed to score.
    """

    target_fpr: float
    global_threshold: float
    per_cluster: Float64Array
    holdout_counts: IntArray

    def for_clusters(self, cluster: npt.NDArray[np.int64]) -> Float64Array:
        """Threshold per event: its cluster's where it has one (id >= 0), else the global one."""
        out = np.full(cluster.shape, self.global_threshold, dtype=np.float64)
        if self.per_cluster.size:
            has = cluster >= 0
            out[has] = self.per_cluster[cluster[has]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "global_threshold": self.global_threshold,
            "per_cluster": [float(t) for t in self.per_cluster],
            "holdout_counts": [int(c) for c in self.holdout_counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        per_cluster = np.asarray(data["per_cluster"], dtype=np.float64).reshape(-1)
        counts = np.asarray(data["holdout_counts"], dtype=np.int64).reshape(-1)
        if counts.shape != per_cluster.shape:
            raise ValueError("thresholds: per_cluster and holdout_counts differ in length")
        if not np.all(per_cluster > 0) or float(data["global_threshold"]) <= 0:
            raise ValueError("thresholds must be positive")
        return cls(
            target_fpr=check_target_fpr(float(data["target_fpr"])),
            global_threshold=float(data["global_threshold"]),
            per_cluster=per_cluster,
            holdout_counts=counts,
        )


def calibrate(
    raw: npt.ArrayLike,
    target_fpr: float,
    *,
    cluster: npt.ArrayLike | None = None,
    n_clusters: int = 0,
    prior: npt.ArrayLike | None = None,
    prior_strength: float | None = None,
    floor: float = DEFAULT_FLOOR,
) -> Thresholds:
    """Thresholds from held-out raw scores: global, plus shrunk per-cluster ones (see module doc).

    ``cluster`` gives each held-out point's cluster id (ids < 0 count only for the global
    threshold); ``prior`` (n_clusters,) replaces the global threshold as shrinkage target.
    """
    check_target_fpr(target_fpr)
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    global_t = quantile_threshold(values, target_fpr, floor=floor)
    if cluster is None or n_clusters == 0:
        return Thresholds(target_fpr, global_t, np.empty(0, np.float64), np.empty(0, np.int64))
    ids = np.asarray(cluster, dtype=np.int64).reshape(-1)
    if ids.shape != values.shape:
        raise ValueError("calibrate: one cluster id per held-out score is needed")
    priors = np.full(n_clusters, global_t) if prior is None else np.asarray(prior, dtype=np.float64)
    if priors.shape != (n_clusters,):
        raise ValueError(f"calibrate: prior must have shape ({n_clusters},), got {priors.shape}")
    priors = np.maximum(np.where(np.isfinite(priors), priors, global_t), floor)
    strength = 1.0 / target_fpr if prior_strength is None else float(prior_strength)
    per_cluster = np.empty(n_clusters, dtype=np.float64)
    counts = np.bincount(ids[ids >= 0], minlength=n_clusters)[:n_clusters].astype(np.int64)
    for c in range(n_clusters):
        members = values[ids == c]
        if members.size == 0:
            per_cluster[c] = priors[c]
            continue
        local = quantile_threshold(members, target_fpr, floor=floor)
        weight = members.size / (members.size + strength)
        per_cluster[c] = math.exp(weight * math.log(local) + (1.0 - weight) * math.log(priors[c]))
    return Thresholds(target_fpr, global_t, per_cluster, counts)


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


def drift_margin(later_scores: Sequence[npt.ArrayLike], target_fpr: float) -> float:
    """How much higher a threshold had to be to hold ``target_fpr`` on later data (>= 1).

    ``later_scores``: for each forward step over a training set in time order (fit and calibrate
    on the first slices, score the next one), the calibrated scores of that next slice. The
    margin is the largest ``1 - target_fpr`` quantile among them: dividing scores by it would
    have kept every step's later FPR at or below the target. 1.0 when no step drifted.
    """
    check_target_fpr(target_fpr)
    needed = [quantile_threshold(scores, target_fpr) for scores in later_scores]
    return max([1.0, *needed])
