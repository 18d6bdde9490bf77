"""The fused detector's parts: tail evidence, leave-one-out calibration, lexical measures, and how
embedding and text evidence are fused — corroborated by default, Fisher's sum on request and for
bundles saved before the option (the contract suite in tests/test_detector_contract.py covers the
rest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.model.detectors.fused import (
    COMPONENTS,
    DEFAULT_COMPONENTS,
    FUSIONS,
    FusedDetector,
    held_out_evidence,
    tail_evidence,
)
from agent.model.detectors.lexical import CharNgramNeighbours, UnseenTokens, tokens


def test_tail_evidence_is_zero_in_the_bulk_and_grows_past_the_maximum() -> None:
    null = np.sort(np.random.default_rng(0).uniform(0.0, 1.0, size=999))
    m = len(null)
    at = tail_evidence(null, np.array([-1.0, 0.0, null[-1], 2.0 * null[-1], 4.0 * null[-1]]))
    assert at[0] == pytest.approx(-np.log((1 + m) / (m + 1)))  # below everything: p = 1
    assert at[1] < 0.01
    assert at[2] == pytest.approx(np.log((m + 1) / 2))  # one held-out value at least as large
    assert at[2] < at[3] < at[4]
    # past the maximum the count decays as h / x while the ratio term grows: n(h) = 1 here
    assert at[4] - at[3] == pytest.approx(np.log(1.5 / 1.25) + np.log(2.0))


def test_tail_evidence_is_monotone_and_continuous() -> None:
    null = np.sort(np.r_[np.zeros(50), np.random.default_rng(1).exponential(size=200)])
    x = np.linspace(-0.1, 3.0 * null[-1], 20001)
    evidence = tail_evidence(null, x)
    assert np.all(np.diff(evidence) >= -1e-12)
    # continuous: a tiny step in x never jumps a rank (the slope is bounded by the null's spacing)
    assert np.max(np.abs(tail_evidence(null, x + 1e-9) - evidence)) < 1e-3


def test_all_zero_null_still_orders_values() -> None:
    null = np.zeros(10)
    evidence = tail_evidence(null, np.array([0.0, 1e-4, 1e-2]))
    assert evidence[0] == pytest.approx(0.0, abs=1e-12) and evidence[0] < evidence[1] < evidence[2]


def test_held_out_evidence_leaves_each_value_out() -> None:
    null = np.sort(np.random.default_rng(2).normal(size=300))
    loo = held_out_evidence(null)
    m = len(null)
    for i in (0, 17, 150, 298):
        others_at_least = int(np.sum(np.delete(null, i) >= null[i]))
        assert loo[i] == pytest.approx(-np.log((others_at_least + 1) / m))
        # within one rank of what the interpolated count of a fresh value would give
        fresh = tail_evidence(np.delete(null, i), null[i : i + 1])[0]
        assert abs(loo[i] - fresh) <= np.log((others_at_least + 2) / (others_at_least + 1)) + 1e-9
    # the largest is measured against the second largest, as a fresh value would be
    assert loo[-1] == pytest.approx(tail_evidence(null[:-1], null[-1:])[0], rel=1e-6)


def test_unseen_tokens_share() -> None:
    vocab = UnseenTokens.fit(["disk full on node", "disk ok"])
    shares = vocab.share(["disk full", "disk on fire !", "", "DISK OK"])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.0, 0.0])
    assert tokens("GET /a?b=1") == ["get", "/", "a", "?", "b", "=", "1"]
    restored = UnseenTokens.restore(vocab.arrays())
    assert restored.vocabulary == vocab.vocabulary


def test_char_ngram_distance_ranks_spelling_and_round_trips() -> None:
    normal = ["user logged in from office", "user logged out", "backup finished ok"] * 5
    model = CharNgramNeighbours.fit(normal, k=1, block_size=2)
    d = model.distance(["user logged in from office", "user logged in from home", "' OR 1=1; DROP TABLE"])
    assert d[0] == 0.0 and 0.0 < d[1] < d[2]
    again = CharNgramNeighbours.restore(model.arrays(), k=1, block_size=2)
    np.testing.assert_allclose(again.distance(["user logged in from home"]), d[1:2], rtol=1e-6)


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_a_lexical_anomaly_with_a_normal_vector_is_flagged_by_fisher_only() -> None:
    """Identical vectors, different texts: only the text measures can tell. Fisher's sum lets them
    alert on their own; the corroborated default counts them only as far as the embedding is
    unusual too, so a paraphrase that reads differently but means the same stays quiet."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(600)]
    vectors = _vectors(600, 4)
    probe = np.repeat(vectors[:1], 2, axis=0)
    probe_texts = [texts[0], "zzkq plxv qqrt vvnm ooiu"]
    fisher = FusedDetector(components=COMPONENTS, fusion="fisher", target_fpr=0.02)
    fisher.fit(vectors, texts=texts)
    scores = fisher.score(probe, probe_texts).score
    assert scores[0] <= 1.0 < scores[1]
    corroborated = FusedDetector(target_fpr=0.02)
    corroborated.fit(vectors, texts=texts)
    assert corroborated.fusion == "corroborated" and corroborated.components == DEFAULT_COMPONENTS
    quiet = corroborated.score(probe, probe_texts).score
    # at most twice the embedding's own evidence, which is that of a training vector: tiny
    assert quiet[1] <= 2.0 * quiet[0] + 1e-12 and quiet[1] <= 1.0
    vector_only = FusedDetector(components=["knn", "kmeans"], target_fpr=0.02)
    vector_only.fit(vectors, texts=texts)
    same = vector_only.score(probe, probe_texts).score
    assert same[0] == same[1]


def test_text_evidence_counts_up_to_the_embeddings() -> None:
    """corroborated: raw = e_knn + min(e_tfidf + e_unseen, e_knn)."""
    rng = np.random.default_rng(9)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(400)]
    vectors = _vectors(400, 10)
    detector = FusedDetector()
    detector.fit(vectors, texts=texts)
    probe_texts = [*texts[:5], "zzkq plxv w1 w2", "w3 w4 w5 qqqq", "zzkq plxv qqrt vvnm"]
    probe = np.r_[vectors[:5], _vectors(3, 11)]
    measures, _ = detector._measures(probe, probe_texts)
    e = {c: tail_evidence(detector._null[c], measures[c]) for c in DEFAULT_COMPONENTS}
    expected = e["knn"] + np.minimum(e["tfidf"] + e["unseen"], e["knn"])
    np.testing.assert_allclose(detector.score(probe, probe_texts).distance, expected, rtol=1e-12)
    assert np.any(e["tfidf"] + e["unseen"] > e["knn"])  # the cap is exercised
    assert detector.held_out_scores is not None and len(detector.held_out_scores) == 80


def test_components_and_fusion_are_validated() -> None:
    assert set(COMPONENTS) == {"knn", "kmeans", "tfidf", "unseen"}
    for bad in ([], ["knn", "knn"], ["bm25"]):
        with pytest.raises(ValueError, match="components"):
            FusedDetector(components=bad)
    assert FUSIONS == ("corroborated", "fisher")
    with pytest.raises(ValueError, match="fusion"):
        FusedDetector(fusion="max")


def test_tail_calibration_split_is_saved_and_used() -> None:
    vectors = _vectors(500, 5)
    texts = [f"line {i % 40}" for i in range(500)]
    detector = FusedDetector(calibration_split="tail")
    detector.fit(vectors, texts=texts)
    assert detector.config()["calibration_split"] == "tail"
    with pytest.raises(ValueError, match="calibration split"):
        FusedDetector(calibration_split="newest")


def test_fisher_embedding_measures_vote_once_and_text_measures_add() -> None:
    """fisher: raw = max(e_knn, e_kmeans) + e_tfidf + e_unseen, each against its held-out null."""
    rng = np.random.default_rng(6)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(400)]
    vectors = _vectors(400, 7)
    detector = FusedDetector(components=COMPONENTS, fusion="fisher")
    detector.fit(vectors, texts=texts)
    probe_texts = [*texts[:5], "zzkq plxv w1 w2", "w3 w4 w5 qqqq"]
    probe = np.r_[vectors[:5], _vectors(2, 8)]
    measures, _ = detector._measures(probe, probe_texts)
    e = {c: tail_evidence(detector._null[c], measures[c]) for c in COMPONENTS}
    expected = np.maximum(e["knn"], e["kmeans"]) + e["tfidf"] + e["unseen"]
    np.testing.assert_allclose(detector.score(probe, probe_texts).distance, expected, rtol=1e-12)


def test_a_bundle_saved_before_the_fusion_option_loads_as_fisher(tmp_path: Path) -> None:
    """Its detector.json has no fusion: it summed, and its threshold was set on the sum."""
    rng = np.random.default_rng(12)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(300)]
    vectors = _vectors(300, 13)
    detector = FusedDetector(components=COMPONENTS, fusion="fisher")
    detector.fit(vectors, texts=texts)
    detector.save(tmp_path)
    meta = json.loads((tmp_path / "detector.json").read_text(encoding="utf-8"))
    del meta["config"]["fusion"], meta["extra"]["fusion"]
    (tmp_path / "detector.json").write_text(json.dumps(meta), encoding="utf-8")
    old = FusedDetector.load(tmp_path)
    assert old.fusion == "fisher" and old.components == COMPONENTS
    probe_texts = [*texts[:3], "zzkq plxv w1 w2"]
    probe = np.r_[vectors[:3], _vectors(1, 14)]
    expected = detector.score(probe, probe_texts).score
    np.testing.assert_array_equal(old.score(probe, probe_texts).score, expected)
