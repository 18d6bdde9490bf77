"""Training patterns kept in the bundle: pattern hashes, the known-pattern set, nearest examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import agent.model.examples
from agent.model.examples import (
    EXAMPLE_MAX_CHARS,
    Examples,
    KnownPatterns,
    Neighbour,
    pattern_hash,
    rank_patterns,
)

BGL_PATTERN = "<NUM> <TS> <NODE> RAS KERNEL INFO instruction cache parity error corrected"


def test_pattern_hash_is_a_fixed_recipe() -> None:
    # Values from `printf '%s' TEXT | sha256sum | cut -c1-16`, read as a big-endian integer:
    # bundles store these hashes, so the recipe must never change silently.
    assert pattern_hash(BGL_PATTERN) == 0x40C916E47A4408B5 == 4668287659305863349
    assert pattern_hash("") == 0xE3B0C44298FC1C14
    # Non-ASCII is UTF-8; a lone surrogate (possible from JSON "\ud800") is passed through, not an error.
    assert pattern_hash("café \ud800") == 0xA13C823DC2ED3719
    assert 0 <= pattern_hash("x" * 10_000) < 2**64


def test_rank_patterns_most_frequent_first_ties_by_first_occurrence() -> None:
    texts = ["b", "a", "c", "a", "b", "d", "a", "c"]
    ranked, first = rank_patterns(texts)
    assert ranked == ["a", "b", "c", "d"]  # a×3, then b×2 and c×2 in order of first appearance, d
    assert first.tolist() == [1, 0, 2, 5]
    assert [texts[i] for i in first] == ranked
    empty, none = rank_patterns([])
    assert empty == [] and none.tolist() == []


def test_known_patterns_membership(tmp_path: Path) -> None:
    texts = [BGL_PATTERN, "b", "", "café \ud800", "b", BGL_PATTERN]
    known = KnownPatterns.from_texts(texts)
    assert len(known) == 4
    for text in texts:
        assert text in known
    for other in ("B", "b ", BGL_PATTERN + ".", "café", "never seen"):
        assert other not in known
    assert known.hashes.dtype == np.uint64
    assert np.all(np.diff(known.hashes.astype(np.float64)) > 0)
    with pytest.raises(ValueError, match="read-only"):
        known.hashes[0] = 0

    loaded = KnownPatterns.load(known.save(tmp_path / "known_patterns.npy"))
    np.testing.assert_array_equal(loaded.hashes, known.hashes)
    assert all(text in loaded for text in texts)
    assert "never seen" not in KnownPatterns.from_texts([])

    top = np.array([2**64 - 1], dtype=np.uint64)  # searchsorted at the top of the range
    assert len(KnownPatterns(top)) == 1


@pytest.mark.parametrize(
    ("hashes", "message"),
    [
        (np.array([3, 1], dtype=np.uint64), "sorted and unique"),
        (np.array([1, 1], dtype=np.uint64), "sorted and unique"),
        (np.array([1, 2], dtype=np.int64), "1-D uint64"),
        (np.zeros((2, 2), dtype=np.uint64), "1-D uint64"),
    ],
)
def test_known_patterns_refuses_a_malformed_array(hashes: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KnownPatterns(hashes)


def _reference(examples: Examples, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Brute force: every similarity from the stored float16 vectors, full sort by (-sim, index)."""
    stored = examples.vectors.astype(np.float32)
    out = []
    for q in queries.astype(np.float32):
        norm = np.linalg.norm(q)
        unit = q / norm if norm > 0 else q
        sims = [float(np.dot(unit, row)) for row in stored]
        order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))[:k]
        out.append([(i, sims[i]) for i in order])
    return out


@pytest.mark.parametrize("k", [1, 3, 7])
def test_nearest_matches_brute_force(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.model.examples, "_QUERY_BLOCK", 5)  # several query blocks
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 16))
    examples = Examples.from_vectors([f"pattern {i}" for i in range(300)], vectors)
    queries = rng.normal(size=(12, 16)) * 3.0  # not unit length: nearest normalises them
    found = examples.nearest(queries, k=k)
    expected = _reference(examples, queries, k)
    assert len(found) == len(queries)
    for got, want in zip(found, expected, strict=True):
        assert [n.text for n in got] == [f"pattern {i}" for i, _ in want]
        np.testing.assert_allclose([n.similarity for n in got], [s for _, s in want], atol=6e-5)
        assert all(n.similarity == round(n.similarity, 4) for n in got)
        sims = [n.similarity for n in got]
        assert sims == sorted(sims, reverse=True)


def test_nearest_ties_go_to_the_lower_index_and_k_beyond_n() -> None:
    # Exactly representable vectors: every product is exact, so equal similarities really tie.
    vectors = np.array(
        [[0, 1, 0, 0], [1, 0, 0, 0], [0.6, 0.8, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]],
        dtype=np.float32,
    )
    examples = Examples.from_vectors(["up", "a", "diag", "b", "side", "c"], vectors)
    query = np.array([[2.0, 0, 0, 0]])
    assert examples.nearest(query, k=2) == [[Neighbour("a", 1.0), Neighbour("b", 1.0)]]
    assert [n.text for n in examples.nearest(query, k=3)[0]] == ["a", "b", "c"]
    everything = examples.nearest(query, k=50)[0]  # k > n: all of them, still ordered
    assert [(n.text, n.similarity) for n in everything] == [
        ("a", 1.0),
        ("b", 1.0),
        ("c", 1.0),
        ("diag", 0.6001),
        ("up", 0.0),
        ("side", 0.0),
    ]  # fmt: skip  (0.6 stored as float16 is 0.60009765625)
    zero = examples.nearest(np.zeros((1, 4)), k=2)[0]  # a zero query: all similarities 0, index order
    assert zero == [Neighbour("up", 0.0), Neighbour("a", 0.0)]
    assert examples.nearest(query, k=0) == [[]]
    assert examples.nearest(np.empty((0, 4)), k=3) == []
    assert Examples.from_vectors([], np.empty((0, 4))).nearest(query) == [[]]
    with pytest.raises(ValueError, match=r"shape \(m, 4\)"):
        examples.nearest(np.zeros((1, 3)))


def test_a_training_vector_finds_itself() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 384)).astype(np.float32)
    texts = [f"t{i}" for i in range(200)]
    examples = Examples.from_vectors(texts, vectors)
    for i, neighbours in enumerate(examples.nearest(vectors[[0, 17, 199]], k=3)):
        want = texts[[0, 17, 199][i]]
        assert neighbours[0].text == want
        assert neighbours[0].similarity == pytest.approx(1.0, abs=2e-3)  # float16 storage
        assert neighbours[1].similarity < 0.5


def test_from_vectors_normalises_stores_float16_and_cuts_texts() -> None:
    long = "x" * (EXAMPLE_MAX_CHARS + 100)
    examples = Examples.from_vectors([long, "short"], np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert examples.texts == ("x" * EXAMPLE_MAX_CHARS, "short")
    assert examples.vectors.dtype == np.float16
    np.testing.assert_allclose(examples.vectors.astype(np.float32), [[0.6, 0.8], [0.0, 0.0]], atol=1e-3)
    assert examples.dim == 2 and len(examples) == 2
    with pytest.raises(ValueError, match="2 texts but 1 vectors"):
        Examples(["a", "b"], np.zeros((1, 2), dtype=np.float16))
    with pytest.raises(ValueError, match="float16"):
        Examples(["a"], np.zeros((1, 2), dtype=np.float32))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    texts = ["plain", 'quote " and \\ backslash', "line\nbreak", "café ✓", "lone \ud800 surrogate"]
    examples = Examples.from_vectors(texts, np.random.default_rng(2).normal(size=(5, 8)))
    written = examples.save(tmp_path)
    assert [p.name for p in written] == ["examples.npy", "examples.jsonl"]
    lines = (tmp_path / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == texts  # one JSON string per line, same order
    loaded = Examples.load(tmp_path)
    assert loaded.texts == examples.texts
    np.testing.assert_array_equal(loaded.vectors, examples.vectors)
    before = examples.vectors.copy()
    examples.nearest(before[:1])  # switches to the float32 working copy: the float16 view is unchanged
    np.testing.assert_array_equal(examples.vectors, before)
    (tmp_path / "again").mkdir()
    examples.save(tmp_path / "again")
    assert (tmp_path / "again" / "examples.npy").read_bytes() == (tmp_path / "examples.npy").read_bytes()

    (tmp_path / "examples.jsonl").write_text('"a"\n7\n"c"\n"d"\n"e"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not a JSON string"):
        Examples.load(tmp_path)
    (tmp_path / "examples.jsonl").write_text('"a"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="1 texts but 5 vectors"):
        Examples.load(tmp_path)
