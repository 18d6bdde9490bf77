"""Focused checks per detector, beyond the shared contract (tests/test_detector_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.covariance import LedoitWolf

from agent.model.detectors import create_detector
from agent.model.detectors.calibration import holdout_split
from agent.model.detectors.class_centroid import ClassCentroidDetector
from agent.model.detectors.hdbscan_detector import HdbscanDetector
from agent.model.detectors.kmeans import KMeansDetector
from agent.model.detectors.knn import KnnDetector
from agent.model.detectors.knn_vote import KnnVoteDetector
from agent.model.detectors.mahalanobis import MahalanobisDetector


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(n: int, k: int, seed: int, dim: int = 16) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 4.0
    which = rng.integers(0, k, size=n)
    return _unit(centres[which] + rng.normal(size=(n, dim)) * 0.3), which.astype(np.int64)


# -- kmeans --------------------------------------------------------------------------------------


def test_kmeans_uses_the_number_of_normal_classes_when_labels_name_several() -> None:
    x, which = blobs(900, 4, seed=0)
    detector = KMeansDetector()
    detector.fit(x, np.array(["a", "b"])[which % 2])
    assert detector.n_clusters == 2


def test_kmeans_chooses_k_by_silhouette_without_labels() -> None:
    x, _ = blobs(1200, 4, seed=1)
    detector = KMeansDetector()
    detector.fit(x)
    assert detector.n_clusters == 4
    single = KMeansDetector()
    single.fit(x, np.array(["-"] * len(x)))
    assert single.n_clusters == 1  # the seeds' method: one centroid per normal label


def test_kmeans_honours_n_clusters_and_assigns_each_blob_its_own_cluster() -> None:
    x, which = blobs(1200, 3, seed=2)
    detector = KMeansDetector(n_clusters=3)
    detector.fit(x)
    cluster = detector.score(x).cluster
    for blob in range(3):
        assert len(np.unique(cluster[which == blob])) == 1
    assert len(np.unique(cluster)) == 3


# -- class-centroid ------------------------------------------------------------------------------


def test_class_centroid_needs_labels_and_names_its_clusters_by_class() -> None:
    x, which = blobs(900, 3, seed=3)
    with pytest.raises(ValueError, match="--label-field"):
        ClassCentroidDetector().fit(x)
    detector = ClassCentroidDetector()
    detector.fit(x, np.array(["anger", "joy", "sadness"])[which])
    assert detector.cluster_labels == ["anger", "joy", "sadness"]
    scores = detector.score(x)
    assert np.array_equal(scores.cluster, which)


# -- knn -----------------------------------------------------------------------------------------


def test_knn_keeps_duplicates_and_caps_the_reference_set() -> None:
    x, _ = blobs(400, 2, seed=4)
    repeated = np.r_[x, x, x]
    detector = KnnDetector(holdout_fraction=0.25)
    detector.fit(repeated)
    assert detector.reference_size == 900  # the fit part (75 %), duplicates and all
    capped = KnnDetector(max_reference=50)
    capped.fit(repeated)
    assert capped.reference_size == 50


def test_hdbscan_refuses_data_without_clusters() -> None:
    x = _unit(np.random.default_rng(14).normal(size=(200, 16)))
    with pytest.raises(ValueError, match="no cluster"):
        HdbscanDetector(min_cluster_size=150, min_samples=150).fit(x)


def test_knn_distance_is_mean_or_kth_cosine_distance_to_the_reference(tmp_path: Path) -> None:
    x, _ = blobs(300, 2, seed=5)
    probe = _unit(np.random.default_rng(6).normal(size=(20, 16)))
    for aggregate in ("mean", "kth"):
        detector = KnnDetector(k=3, aggregate=aggregate, block_size=7)
        detector.fit(x)
        detector.save(tmp_path / aggregate)
        reference = np.load(tmp_path / aggregate / "reference.npy")
        distances = np.sort(1.0 - probe.astype(np.float64) @ reference.T.astype(np.float64), axis=1)[:, :3]
        expected = distances.mean(axis=1) if aggregate == "mean" else distances[:, 2]
        np.testing.assert_allclose(detector.score(probe).distance, expected, atol=1e-6)


def test_knn_exact_duplicates_score_zero_in_any_batch() -> None:
    x, _ = blobs(500, 2, seed=17)
    detector = KnnDetector(k=1)
    detector.fit(x)
    alone = np.concatenate([detector.score(x[i : i + 1]).distance for i in range(50)])
    batched = detector.score(x[:50]).distance
    assert np.array_equal(alone == 0.0, batched == 0.0)
    np.testing.assert_allclose(alone, batched, rtol=1e-5)
    assert np.sum(batched == 0.0) >= 35  # the ~80 % of them that are in the reference set


def test_knn_clusters_are_the_nearest_neighbours_class_when_labelled() -> None:
    x, which = blobs(600, 2, seed=7)
    detector = KnnDetector()
    detector.fit(x, np.array(["ham", "eggs"])[which])
    assert detector.cluster_labels == ["eggs", "ham"]
    assert np.array_equal(detector.score(x).cluster, 1 - which)
    unlabelled = KnnDetector()
    unlabelled.fit(x)
    assert unlabelled.cluster_labels is None and np.all(unlabelled.score(x).cluster == -1)


# -- knn-vote ------------------------------------------------------------------------------------


def test_knn_vote_needs_two_classes() -> None:
    x, _ = blobs(300, 2, seed=15)
    with pytest.raises(ValueError, match="two normal classes"):
        KnnVoteDetector().fit(x, np.array(["-"] * len(x)))


def test_knn_vote_equals_knn_where_neighbours_agree_and_raises_between_classes() -> None:
    x, which = blobs(1200, 2, seed=16)
    labels = np.array(["a", "b"])[which]
    vote, plain = KnnVoteDetector(weight=4.0), KnnDetector()
    vote.fit(x, labels)
    plain.fit(x, labels)
    inside = _unit(np.eye(16)[[0, 1]] * 4.0)  # the two blob centres
    np.testing.assert_allclose(vote.score(inside).distance, plain.score(inside).distance, rtol=1e-9)
    between = _unit((np.eye(16)[0] + np.eye(16)[1])[None, :])
    ratio = vote.score(between).distance / plain.score(between).distance
    assert 2.0 < ratio[0] <= 5.0  # 1 + 4 x uncertainty, uncertainty near 0.5 at the midpoint


# -- hdbscan -------------------------------------------------------------------------------------


def test_hdbscan_projects_to_16_dims_and_marks_far_points_as_noise(tmp_path: Path) -> None:
    x, _ = blobs(1500, 3, seed=8, dim=32)
    detector = HdbscanDetector()
    detector.fit(x)
    detector.save(tmp_path)
    assert np.load(tmp_path / "pca_components.npy").shape == (16, 32)
    assert detector.n_clusters >= 3
    far = _unit(np.random.default_rng(9).normal(size=(50, 32)) + np.eye(32)[20] * 6)
    scores = detector.score(far)
    assert np.all(scores.is_anomaly)
    noise = scores.cluster == -1
    assert np.any(noise)
    assert np.all(scores.distance[noise] >= 1.0)  # noise: GLOSH + 1, above every clustered point
    assert np.all(detector.score(x).distance[detector.score(x).cluster >= 0] <= 1.0)


def test_hdbscan_default_min_cluster_size_scales_with_data() -> None:
    detector = HdbscanDetector()
    assert detector.effective_min_cluster_size(100) == 5
    assert detector.effective_min_cluster_size(3000) == 30
    assert detector.effective_min_cluster_size(10**6) == 100
    assert HdbscanDetector(min_cluster_size=12).effective_min_cluster_size(10**6) == 12


# -- mahalanobis ---------------------------------------------------------------------------------


def test_mahalanobis_matches_the_textbook_formula_with_ledoit_wolf() -> None:
    x, which = blobs(1000, 2, seed=10)
    labels = np.array(["a", "b"])[which]
    detector = MahalanobisDetector(holdout_fraction=0.2, seed=0)
    detector.fit(x, labels)
    # recompute on the same fit part the detector used
    fit_idx, _ = holdout_split(len(x), fraction=0.2, seed=0, strata=labels)
    fx, fl = x[fit_idx].astype(np.float64), labels[fit_idx]
    means = {c: fx[fl == c].mean(axis=0) for c in ("a", "b")}
    residuals = fx - np.stack([means[c] for c in fl])
    precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
    probe = _unit(np.random.default_rng(11).normal(size=(30, 16))).astype(np.float64)
    expected = np.min(
        [np.sqrt(np.einsum("ij,jk,ik->i", probe - m, precision, probe - m)) for m in means.values()], axis=0
    )
    np.testing.assert_allclose(detector.score(probe.astype(np.float32)).distance, expected, rtol=1e-4)


def test_mahalanobis_without_labels_is_one_unnamed_gaussian() -> None:
    x, _ = blobs(600, 3, seed=12)
    detector = MahalanobisDetector()
    detector.fit(x)
    assert detector.n_clusters == 1 and detector.cluster_labels is None


# -- persistence guards --------------------------------------------------------------------------


def test_load_refuses_another_detectors_files_and_unknown_formats(tmp_path: Path) -> None:
    x, _ = blobs(300, 2, seed=13)
    create_knn = create_detector("knn")
    create_knn.fit(x)
    create_knn.save(tmp_path)
    with pytest.raises(ValueError, match="'knn' detector, not 'kmeans'"):
        KMeansDetector.load(tmp_path)
    meta = json.loads((tmp_path / "detector.json").read_text())
    (tmp_path / "detector.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="retrain"):
        KnnDetector.load(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        KnnDetector.load(tmp_path / "nowhere")


def test_tail_holdout_takes_the_last_share_per_stratum() -> None:
    fit, held = holdout_split(10, fraction=0.3, order="tail")
    assert held.tolist() == [7, 8, 9] and fit.tolist() == list(range(7))
    strata = np.array(["a"] * 5 + ["b"] * 5)
    _, held = holdout_split(10, fraction=0.4, strata=strata, order="tail")
    assert held.tolist() == [3, 4, 8, 9]
