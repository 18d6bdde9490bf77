"""What the training data looked like, kept in the bundle so an alert can show it next to what fired.

Two things, both about *prepared* texts (``TextPreparation.prepare`` output, the patterns of
``agent/model/patterns.py``) of the normal training records:

``KnownPatterns`` (``known_patterns.npy``)
    the sorted set of ``pattern_hash`` values of every distinct training pattern: "was this exact
    prepared text in the training data?" is one binary search. Hashes only, never text, so every
    bundle has it, ``train --no-examples`` too. The hash does not involve the model on purpose:
    the question is about the data, not about what a model made of it.
``Examples`` (``examples.npy`` + ``examples.jsonl``)
    up to ``DEFAULT_MAX_EXAMPLES`` distinct training patterns, most frequent first, each with its
    L2-normalised embedding (float16) and its text (cut to ``EXAMPLE_MAX_CHARS``), so an alert can
    list the nearest normal examples of an anomalous pattern (``Examples.nearest``). The vectors
    are the ones training computed with the bundle's own embedder on the full prepared text, i.e.
    what the agent computes for the same text. ``train --no-examples`` leaves them out for data
    whose text must not be kept.

Cost: ``nearest`` is a brute-force float32 matrix product, meant for the few anomalous patterns
that miss the pattern table: at the 50,000 × 384 bound about 4 ms for one query and 17 ms for 20
(one BLAS thread, shared development machine). The file holds float16 (37 MB there); the first
``nearest`` call converts it once to float32 (74 MB, about 60 ms) and keeps only that copy, so a
bundle whose examples are never asked for costs the float16 array only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

KNOWN_PATTERNS = "known_patterns.npy"
EXAMPLE_VECTORS = "examples.npy"
EXAMPLE_TEXTS = "examples.jsonl"

DEFAULT_MAX_EXAMPLES = 50_000
"""Typical log data has hundreds to a few thousand patterns, so all of them are kept."""
MAX_KNOWN_PATTERNS = 5_000_000
"""At most this many training pattern hashes (8 bytes each: 40 MB); beyond it the most frequent."""
EXAMPLE_MAX_CHARS = 512
"""Stored example texts are cut to this many characters (the vector is of the full text)."""

_QUERY_BLOCK = 64  # query rows scored together (64 × 50,000 × 4 B = 12.8 MB of similarities)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
HashArray = npt.NDArray[np.uint64]


def pattern_hash(prepared: str) -> int:
    """The first 8 bytes of sha256(UTF-8 of ``prepared``, lone surrogates passed through), big-endian.

    Depends on the text only — not on the model — and must never change: bundles store these values.
    """
    digest = hashlib.sha256(prepared.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def rank_patterns(texts: Sequence[str]) -> tuple[list[str], IntArray]:
    """The distinct ``texts``, most frequent first (ties: first occurrence first), and for each the
    position of its first occurrence in ``texts`` (to pick its vector from the caller's array)."""
    seen: dict[str, list[int]] = {}
    for position, text in enumerate(texts):
        entry = seen.get(text)
        if entry is None:
            seen[text] = [1, position]
        else:
            entry[0] += 1
    ranked = sorted(seen.items(), key=lambda item: (-item[1][0], item[1][1]))
    first = np.fromiter((entry[1] for _, entry in ranked), dtype=np.int64, count=len(ranked))
    return [text for text, _ in ranked], first


class KnownPatterns:
    """The set of training pattern hashes: ``prepared in known`` is True iff that exact prepared
    text (up to a 64-bit hash collision, ~n²/2⁶⁵) was a normal training pattern."""

    def __init__(self, hashes: HashArray) -> None:
        hashes = np.asarray(hashes)
        if hashes.dtype != np.uint64 or hashes.ndim != 1:
            raise ValueError(f"expected a 1-D uint64 array, got {hashes.dtype} with shape {hashes.shape}")
        if len(hashes) > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
            raise ValueError("pattern hashes must be sorted and unique")
        self._hashes = hashes

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> KnownPatterns:
        """The hashes of ``texts`` (prepared), deduplicated and sorted."""
        hashes = np.fromiter((pattern_hash(t) for t in texts), dtype=np.uint64)
        return cls(np.unique(hashes))

    @property
    def hashes(self) -> HashArray:
        """The sorted unique hashes (read-only view)."""
        view = self._hashes.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, prepared: str) -> bool:
        value = np.uint64(pattern_hash(prepared))
        i = int(np.searchsorted(self._hashes, value))
        return i < len(self._hashes) and self._hashes[i] == value

    def save(self, path: Path) -> Path:
        np.save(path, self._hashes, allow_pickle=False)
        return path

    @classmethod
    def load(cls, path: Path) -> KnownPatterns:
        """Read ``known_patterns.npy``; ValueError if it is not a sorted unique uint64 vector."""
        return cls(np.load(path, allow_pickle=False))


@dataclass(frozen=True)
class Neighbour:
    """One nearest training pattern: its (prepared, possibly cut) text and cosine similarity."""

    text: str
    similarity: float


class Examples:
    """Distinct training patterns with their unit embedding vectors, for nearest-example look-ups.

    ``texts[i]`` belongs to ``vectors[i]``; row order is the stored order (most frequent pattern
    first), which also breaks exact similarity ties. Not thread-safe on the first ``nearest`` call
    (a race there would only convert twice); one loop owns it.
    """

    def __init__(self, texts: Sequence[str], vectors: npt.NDArray[np.float16]) -> None:
        vectors = np.asarray(vectors)
        if vectors.dtype != np.float16 or vectors.ndim != 2:
            raise ValueError(f"expected a 2-D float16 array, got {vectors.dtype} with shape {vectors.shape}")
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self.texts: tuple[str, ...] = tuple(texts)
        self._dim = int(vectors.shape[1])
        self._f16: npt.NDArray[np.float16] | None = vectors
        self._f32: FloatArray | None = None  # made by the first nearest(); then _f16 is dropped

    @classmethod
    def from_vectors(cls, texts: Sequence[str], vectors: npt.ArrayLike) -> Examples:
        """``texts`` (distinct prepared texts, in the order to keep) and their embeddings (n, dim):
        vectors are L2-normalised in float32 and stored as float16, texts cut to EXAMPLE_MAX_CHARS."""
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2:
            raise ValueError(f"expected vectors of shape (n, dim), got {v.shape}")
        return cls([t[:EXAMPLE_MAX_CHARS] for t in texts], _normalised(v).astype(np.float16))

    @property
    def vectors(self) -> npt.NDArray[np.float16]:
        """The stored unit vectors, float16 (n, dim), read-only (float16 → float32 → float16 is exact)."""
        f16 = self._f16 if self._f16 is not None else self._float32().astype(np.float16)
        view = f16.view()
        view.flags.writeable = False
        return view

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self.texts)

    def nearest(self, vectors: npt.ArrayLike, k: int = 3) -> list[list[Neighbour]]:
        """For each row of ``vectors`` (m, dim), the ``k`` most similar examples (fewer if there are
        fewer), by cosine similarity descending (float32; exact ties: lower row first), each
        similarity rounded to 4 decimals. Query rows are normalised here; a zero row gets 0.0."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (m, {self.dim}), got {q.shape}")
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(q))]
        q = _normalised(q)
        matrix = self._float32()
        out: list[list[Neighbour]] = []
        for start in range(0, len(q), _QUERY_BLOCK):
            sims: FloatArray = q[start : start + _QUERY_BLOCK] @ matrix.T
            for row in sims:
                idx = _top_k(row, k)
                out.append([Neighbour(self.texts[i], round(float(row[i]), 4)) for i in idx.tolist()])
        return out

    def _float32(self) -> FloatArray:
        if self._f32 is None:
            assert self._f16 is not None
            self._f32 = np.ascontiguousarray(self._f16, dtype=np.float32)
            self._f16 = None
        return self._f32

    def save(self, directory: Path) -> list[Path]:
        """Write ``examples.npy`` and ``examples.jsonl`` (one JSON string per line) into ``directory``."""
        vectors_path, texts_path = directory / EXAMPLE_VECTORS, directory / EXAMPLE_TEXTS
        np.save(vectors_path, self.vectors, allow_pickle=False)
        with texts_path.open("w", encoding="utf-8", newline="\n") as fh:
            for text in self.texts:
                fh.write(json.dumps(text) + "\n")  # ASCII with \u escapes: lone surrogates survive
        return [vectors_path, texts_path]

    @classmethod
    def load(cls, directory: Path) -> Examples:
        """Read what ``save`` wrote; ValueError if the files are malformed or disagree in length."""
        vectors = np.load(directory / EXAMPLE_VECTORS, allow_pickle=False)
        texts: list[str] = []
        with (directory / EXAMPLE_TEXTS).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                text = json.loads(line)
                if not isinstance(text, str):
                    raise ValueError(f"{EXAMPLE_TEXTS} line {number} is not a JSON string")
                texts.append(text)
        return cls(texts, vectors)


def _normalised(v: FloatArray) -> FloatArray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit: FloatArray = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return unit


def _top_k(row: FloatArray, k: int) -> IntArray:
    """Indices of the ``k`` largest values of ``row``, descending, exact ties by index ascending."""
    n = len(row)
    if k < n:
        part = np.argpartition(row, n - k)[n - k :]
        idx = np.flatnonzero(row >= row[part].min())  # every value tied with the k-th too
    else:
        idx = np.arange(n)
    order = np.lexsort((idx, -row[idx]))
    top: IntArray = idx[order[:k]].astype(np.int64)
    return top
