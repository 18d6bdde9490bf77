"""Threshold calibration: held-out split, quantile thresholds, per-cluster shrinkage, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agent.model.detectors.calibration import Thresholds, calibrate, holdout_split, quantile_threshold


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    fit_a, held_a = holdout_split(1000, fraction=0.2, seed=3)
    fit_b, held_b = holdout_split(1000, fraction=0.2, seed=3)
    _, held_c = holdout_split(1000, fraction=0.2, seed=4)
    assert np.array_equal(held_a, held_b) and np.array_equal(fit_a, fit_b)
    assert not np.array_equal(held_a, held_c)
    assert len(held_a) == 200
    assert np.array_equal(np.sort(np.r_[fit_a, held_a]), np.arange(1000))


def test_holdout_split_is_stratified() -> None:
    strata = np.array(["a"] * 900 + ["b"] * 100)
    _, held = holdout_split(1000, fraction=0.2, seed=0, strata=strata)
    assert np.sum(strata[held] == "a") == 180
    assert np.sum(strata[held] == "b") == 20


def test_holdout_split_keeps_singleton_strata_in_the_fit_part_and_both_sides_nonempty() -> None:
    strata = np.array(["a", "b", "c", "c"])
    fit, held = holdout_split(4, fraction=0.2, seed=0, strata=strata)
    assert {0, 1} <= set(fit.tolist())
    assert len(held) >= 1 and len(fit) >= 1
    with pytest.raises(ValueError, match="at least 2"):
        holdout_split(1)
    with pytest.raises(ValueError, match="one entry per vector"):
        holdout_split(5, strata=["a", "b"])


def test_quantile_threshold_hits_the_target_rate_and_is_floored() -> None:
    raw = np.arange(1, 1001, dtype=np.float64)
    t = quantile_threshold(raw, 0.01)
    assert np.mean(raw > t) == pytest.approx(0.01, abs=0.001)
    assert quantile_threshold(np.zeros(50), 0.01, floor=1e-4) == 1e-4
    with pytest.raises(ValueError, match="zero held-out"):
        quantile_threshold([], 0.01)
    with pytest.raises(ValueError, match="NaN"):
        quantile_threshold([1.0, np.nan], 0.01)


def test_per_cluster_thresholds_shrink_towards_the_prior_by_count() -> None:
    rng = np.random.default_rng(0)
    big = rng.exponential(1.0, 20000)  # cluster 0: many points -> its own quantile
    small = rng.exponential(10.0, 20)  # cluster 1: few points, much wider -> mostly the prior
    raw = np.r_[big, small]
    cluster = np.r_[np.zeros(len(big), np.int64), np.ones(len(small), np.int64)]
    th = calibrate(raw, 0.01, cluster=cluster, n_clusters=3)
    own0 = quantile_threshold(big, 0.01)
    own1 = quantile_threshold(small, 0.01)
    w1 = 20 / (20 + 100)
    assert th.per_cluster[0] == pytest.approx(own0, rel=0.01)
    assert th.per_cluster[1] == pytest.approx(
        math.exp(w1 * math.log(own1) + (1 - w1) * math.log(th.global_threshold))
    )
    assert th.per_cluster[2] == th.global_threshold  # no held-out point: the prior
    assert th.holdout_counts.tolist() == [20000, 20, 0]
    prior = np.array([1.0, 2.0, 3.0])
    with_prior = calibrate(raw, 0.01, cluster=cluster, n_clusters=3, prior=prior)
    assert with_prior.per_cluster[2] == 3.0


def test_thresholds_pick_per_cluster_or_global_and_round_trip_json() -> None:
    th = Thresholds(0.01, 2.0, np.array([1.0, 4.0]), np.array([10, 20], dtype=np.int64))
    assert th.for_clusters(np.array([0, 1, -1], dtype=np.int64)).tolist() == [1.0, 4.0, 2.0]
    again = Thresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    assert again.global_threshold == 2.0 and again.per_cluster.tolist() == [1.0, 4.0]
    assert again.holdout_counts.tolist() == [10, 20]
    bad = th.to_dict() | {"per_cluster": [0.0, 1.0]}
    with pytest.raises(ValueError, match="positive"):
        Thresholds.from_dict(bad)
