"""Lexical signals beside the embedding: what an SRE or a spam filter would look at first.

The embedding says what a text *means*; it is blind to the surface a pattern-based tool sees —
a token never seen before, a string of odd characters, a price or a short code in a message. Two
measures, each fitted on the prepared texts of the normal records and computed on prepared texts
alone (so the agent's pattern table stays exact):

``UnseenTokens``
    the share of a text's tokens (lower-cased words and single punctuation marks) that never
    occurred in the training texts — the novelty measure of template miners such as Drain, where a
    new constant in a log line is what makes it a new pattern.
``CharNgramNeighbours``
    the mean cosine distance from a text's character n-gram TF-IDF vector (``char_wb`` 3-5-grams,
    sublinear term frequency, scikit-learn's ``TfidfVectorizer``) to its k nearest training texts:
    how far the *spelling* is from the nearest normal texts, robust to word order and to masking.

Both keep their fitted state as plain arrays (vocabulary strings, idf weights, the reference's CSR
arrays) so a bundle never pickles them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

Float64Array = npt.NDArray[np.float64]

_TOKEN = re.compile(r"\w+|[^\w\s]")
#: cosine distances below this are float32 rounding of identical vectors and count as 0.
_SAME_VECTOR = 1e-5


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens and single punctuation marks of ``text``."""
    return _TOKEN.findall(text.lower())


class UnseenTokens:
    """Share of a text's tokens not in the training vocabulary (0 = every token seen; "" scores 0)."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self.vocabulary = frozenset(vocabulary)

    @classmethod
    def fit(cls, texts: Iterable[str]) -> UnseenTokens:
        return cls(token for text in texts for token in tokens(text))

    def share(self, texts: Sequence[str]) -> Float64Array:
        out = np.empty(len(texts), dtype=np.float64)
        vocabulary = self.vocabulary
        for i, text in enumerate(texts):
            found = tokens(text)
            out[i] = sum(t not in vocabulary for t in found) / len(found) if found else 0.0
        return out

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"vocabulary": np.asarray(sorted(self.vocabulary), dtype=np.str_)}

    @classmethod
    def restore(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> UnseenTokens:
        return cls(str(t) for t in arrays["vocabulary"])


class CharNgramNeighbours:
    """Mean cosine distance of a text's char n-gram TF-IDF vector to its k nearest training texts."""

    NGRAMS = (3, 5)

    def __init__(
        self, vectorizer: TfidfVectorizer, reference: sp.csr_matrix, k: int, block_size: int
    ) -> None:
        self.vectorizer = vectorizer
        # Stored transposed (terms x texts): the layout the query product reads.
        self._reference_t = reference.T.tocsr()
        self.k = int(k)
        self.block_size = int(block_size)

    @classmethod
    def _vectorizer(cls, vocabulary: Mapping[str, int] | None = None) -> TfidfVectorizer:
        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=cls.NGRAMS,
            sublinear_tf=True,
            dtype=np.float32,
            vocabulary=vocabulary,
        )

    @classmethod
    def fit(cls, texts: Sequence[str], *, k: int, block_size: int) -> CharNgramNeighbours:
        vectorizer = cls._vectorizer()
        reference = sp.csr_matrix(vectorizer.fit_transform(texts), dtype=np.float32)
        return cls(vectorizer, reference, k, block_size)

    def distance(self, texts: Sequence[str]) -> Float64Array:
        out = np.empty(len(texts), dtype=np.float64)
        n = min(self.k, self._reference_t.shape[1])
        for start in range(0, len(texts), self.block_size):
            query = self.vectorizer.transform(texts[start : start + self.block_size])
            similarity = np.asarray((query @ self._reference_t).toarray(), dtype=np.float64)
            top = -np.partition(-similarity, n - 1, axis=1)[:, :n]
            distance = np.clip(1.0 - top, 0.0, 2.0)
            distance[distance < _SAME_VECTOR] = 0.0
            out[start : start + len(distance)] = distance.mean(axis=1)
        return out

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        vocabulary = self.vectorizer.vocabulary_
        reference = self._reference_t.T.tocsr()
        terms = np.empty(len(vocabulary), dtype=object)
        for term, index in vocabulary.items():
            terms[index] = term
        return {
            "terms": np.asarray(terms.tolist(), dtype=np.str_),
            "idf": np.asarray(self.vectorizer.idf_, dtype=np.float64),
            "data": reference.data,
            "indices": reference.indices.astype(np.int64),
            "indptr": reference.indptr.astype(np.int64),
        }

    @classmethod
    def restore(
        cls, arrays: Mapping[str, npt.NDArray[Any]], *, k: int, block_size: int
    ) -> CharNgramNeighbours:
        terms = [str(t) for t in arrays["terms"]]
        vectorizer = cls._vectorizer({term: i for i, term in enumerate(terms)})
        vectorizer.idf_ = np.asarray(arrays["idf"], dtype=np.float64)
        indptr = np.asarray(arrays["indptr"], dtype=np.int64)
        reference = sp.csr_matrix(
            (
                np.asarray(arrays["data"], dtype=np.float32),
                np.asarray(arrays["indices"], dtype=np.int64),
                indptr,
            ),
            shape=(len(indptr) - 1, len(terms)),
        )
        return cls(vectorizer, reference, k, block_size)
