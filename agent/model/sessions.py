"""Session model: is this session (a block, request, job: events sharing a key) going wrong?

A session is the sequence of **patterns** (prepared texts, keyed by ``examples.pattern_hash``) of
the events that share a session key, in arrival order. The model never sees text or vectors, so
a session costs nothing on the embedder. It answers two questions:

**Each step, as it arrives** (``step``): how unexpected is this pattern after the session's last
``order - 1`` patterns? A back-off next-pattern table (an n-gram model with Witten-Bell escape
weights, built from the normal training sessions) gives the step's *tail probability*: the
probability that the next pattern would have been one the model finds at most as likely as this
one. Every context ``c`` (the last k patterns, k = order-1 … 0) seen in training contributes::

    T(x | c) = (1 - λ_c) · tail_c(x) + λ_c · T(x | c shortened by its oldest pattern)
    tail_c(x) = share of the successors of c seen no more often after c than x was (0: never)
    λ_c = d_c / (n_c + d_c)        (n_c successors seen after c, d_c of them distinct)

and under the empty context the remainder is 1 (a never-seen pattern is as unlikely as anything
can be). So a pattern seen in that exact place scores by how common it is there; one seen in
training but never after this context pays the escape weights down to where it was seen; a
pattern never seen at all pays every escape weight. The step's **surprise** is ``-log T``
(nats). Unlike DeepLog's fixed top-g cut on an LSTM's ranking, the tail probability adapts to
how many successors a context has: after a context with ten equally common successors none of
them is surprising, after a context with one successor anything else is. An n-gram was chosen
over a sequence network (DeepLog's LSTM, exported to ONNX): it is exact and deterministic, costs
2-5 µs per step in Python with no accelerator, keeps a per-session state of a few integers, and
its session AUROC on the benchmark is 0.996-0.999 (docs/sessions.md). What it misses there are
not sequences a network would model better but steps that normal training sessions also show, so
a network would not earn its cost. ``order`` 2 (the previous pattern) is the default: it measured
at least as well as 3 on the benchmark and needs less data per context.

**The whole session, when it closes** (``close``): three measures, each calibrated on held-out
normal sessions:

``step``    the largest step surprise of the session (the running maximum);
``end``     the surprise of the session *ending* where it did (the end is a successor in the table,
            so "allocated, received, never replicated" or a request without its ``done`` is an
            unexpected end). Only for sessions that went quiet (``gap``) or reached the end of the
            input: a session cut by a cap or evicted did not end;
``counts``  the L1 distance of the session's count vector (how often each pattern occurred) to its
            ``neighbours`` nearest normal fit sessions (mean): how many lines would have to go or
            come to make it look like the sessions seen in training (missing or repeated steps in
            any order; a vector only one training session had is still a little unusual). This
            replaces the PCA residual of Xu et al. (AUROC 0.82 on the issue's split, 0.98 over folds).
            Not for evicted sessions (cut short on purpose).

**Calibration and fusion**, as the fused line detector does (``detectors/fused.py``), on
held-out values that every normal training session contributes once (cross-fitting, ``fit``): each
measure ``x`` gets its empirical tail probability among the held-out sessions' values, extended
past the held-out maximum ``h``; evidence ``e(x) = -log p(x) + log max(1, x / h)``. The two
surprise measures are compared on the probability scale ``e^x``, so beyond ``h`` every further nat
of surprise is a further nat of evidence; the count distance is compared as ``x + 1`` lines, so a
held-out set where every session matched exactly (``h = 0``) makes one extra line worth a factor
of 2, not infinitely much. ``raw = e_step + e_end + e_counts`` (independent tests combined);
the threshold is the ``1 - target_fpr`` quantile of the held-out ``raw`` (each held-out value
measured against the others, never itself), and ``score = raw / threshold``: above 1.0 the
session is anomalous, and about ``target_fpr`` of normal sessions score above it.

**Decisive steps.** Every evidence is >= 0, so once ``e_step`` of the running maximum alone
exceeds the threshold, the session *will* score above 1.0 when it closes, whatever comes next.
``step`` reports such a step as decisive (it compares the surprise with the precomputed surprise
at which ``e_step`` crosses the threshold, no numpy per event) so the agent alerts at once;
the close then confirms and adds no second alert.

**State.** ``SessionState`` holds the last ``order - 1`` pattern ids, a bounded count vector
(``max_distinct`` entries, then an overflow bucket), the event count, the running maximum, the
first decisive step and the ``max_unexpected`` most surprising steps — O(1) in the session's length,
so a session's score depends on its events in order only, never on how they were batched.
``state_to_dict``/``state_from_dict`` give its exact JSON form for the changelog.

**Bounded model.** At most ``max_vocab`` patterns (the most frequent; the rest count as unknown),
``max_contexts`` contexts (the most frequent; the rest back off) and ``max_reference`` distinct
count vectors (the most frequent), plus the held-out values. Saved as ``.npy`` arrays
(``allow_pickle=False``) and one JSON file: loading never executes code.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from agent.model.detectors.calibration import (
    check_target_fpr,
    held_out_evidence,
    quantile_threshold,
)

__all__ = [
    "COMPONENTS",
    "DEFAULT_ORDER",
    "DEFAULT_TARGET_FPR",
    "ENDED_REASONS",
    "END_CODE",
    "REASONS",
    "START_CODE",
    "UNKNOWN_CODE",
    "SessionKey",
    "SessionModel",
    "SessionScore",
    "SessionSequence",
    "SessionState",
    "SessionWindows",
    "StepScore",
    "UnexpectedStep",
    "pattern_label",
    "state_from_dict",
    "state_to_dict",
]

Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MODEL_FILE = "session_model.json"
FORMAT_VERSION = 1
STATE_VERSION = 1

COMPONENTS = ("step", "end", "counts")
#: why a session closed. ``gap``: no event for ``gap_seconds`` of event time (or wall-clock
#: idleness); ``end_of_input``: offline scoring ran out of input (what the agent would decide
#: once the gap passed); ``max_events`` / ``max_seconds``: a cap cut it; ``evicted``: the tracker
#: was full (``max_open``) and closed its oldest session early.
REASONS = ("gap", "end_of_input", "max_events", "max_seconds", "evicted")
#: the session went quiet: its end is part of the evidence.
ENDED_REASONS = frozenset({"gap", "end_of_input"})

#: pattern codes beside the 64-bit pattern hashes (which are >= 0).
START_CODE: Final = -1  # before the first event
END_CODE: Final = -2  # the session's end
UNKNOWN_CODE: Final = -3  # a pattern the model never saw (only as an expected successor)

DEFAULT_ORDER = 2
DEFAULT_TARGET_FPR = 0.002
DEFAULT_MAX_VOCAB = 50_000
DEFAULT_MAX_CONTEXTS = 200_000
DEFAULT_MAX_REFERENCE = 20_000
DEFAULT_MAX_DISTINCT = 32
DEFAULT_MAX_UNEXPECTED = 5
#: the count distance is the mean over this many nearest fit sessions (as the knn line detector).
DEFAULT_NEIGHBOURS = 5
#: cross-fitting folds of the calibration (``SessionModel.fit``).
DEFAULT_FOLDS = 5
TEMPLATE_MAX_CHARS = 512
#: surprises are kept below this many nats (tail probabilities >= e^-700, no overflow of e^x).
_MAX_SURPRISE = 700.0


def pattern_label(code: int) -> str:
    """How a pattern code reads in JSON: 16 hex digits of the pattern hash, or ``<start>``,
    ``<end>``, ``<unknown>``."""
    if code >= 0:
        return f"{code:016x}"
    return {START_CODE: "<start>", END_CODE: "<end>", UNKNOWN_CODE: "<unknown>"}[code]


# --------------------------------------------------------------------- windows


@dataclass(frozen=True)
class SessionWindows:
    """When a session closes: ``gap_seconds`` of event-time inactivity, ``max_seconds`` after its
    first event, or its ``max_events``-th event. The model is trained on sessions cut by the same
    windows, so the agent must run with the windows its model was trained with."""

    gap_seconds: float = 600.0
    max_seconds: float = 86_400.0
    max_events: int = 10_000
    gap_ms: int = field(init=False, repr=False, compare=False)
    max_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gap_seconds) and self.gap_seconds > 0):
            raise ValueError(f"gap_seconds must be a positive number, got {self.gap_seconds}")
        if not (math.isfinite(self.max_seconds) and self.max_seconds >= self.gap_seconds):
            raise ValueError(
                f"max_seconds must be >= gap_seconds ({self.gap_seconds}), got {self.max_seconds}"
            )
        if isinstance(self.max_events, bool) or not isinstance(self.max_events, int) or self.max_events < 1:
            raise ValueError(f"max_events must be an integer >= 1, got {self.max_events!r}")
        object.__setattr__(self, "gap_ms", round(self.gap_seconds * 1000))
        object.__setattr__(self, "max_ms", round(self.max_seconds * 1000))

    def deadline_ms(self, first_ms: int, last_ms: int) -> int:
        """Event time at which a session that began at ``first_ms`` and was last active at
        ``last_ms`` closes, unless another event comes first."""
        return min(last_ms + self.gap_ms, first_ms + self.max_ms)

    def reason(self, first_ms: int, last_ms: int) -> str:
        """Why a session closes at its deadline: ``max_seconds`` if that cap comes first, else ``gap``."""
        return "max_seconds" if first_ms + self.max_ms < last_ms + self.gap_ms else "gap"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gap_seconds": self.gap_seconds,
            "max_seconds": self.max_seconds,
            "max_events": self.max_events,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionWindows:
        unknown = sorted(set(data) - {"gap_seconds", "max_seconds", "max_events"})
        if unknown:
            raise ValueError(f"unknown session window keys: {', '.join(unknown)}")
        return cls(
            gap_seconds=float(data["gap_seconds"]),
            max_seconds=float(data["max_seconds"]),
            max_events=int(data["max_events"]),
        )


@dataclass(frozen=True)
class SessionKey:
    """Where training read each event's session key and time: ``pattern`` (a regex with one group,
    searched in the raw text) or ``field`` (a dotted event field), exactly one; ``time_field``
    (the field holding event times, None when the input had none). Stored with the model so
    ``score --sessions`` and ``evaluate --sessions`` read sessions as training did, and so the
    agent's ``[sessions]`` key can be checked against it; the agent itself takes event time from
    the record timestamps, which should carry the same times. Not part of the ``fingerprint``: a
    session's state does not depend on where its key came from."""

    pattern: str | None = None
    field: str | None = None
    time_field: str | None = None

    def __post_init__(self) -> None:
        if (self.pattern is None) == (self.field is None):
            raise ValueError("a session key is a pattern or a field, exactly one")
        for name, value in (
            ("pattern", self.pattern),
            ("field", self.field),
            ("time_field", self.time_field),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"session key {name} must be a non-empty string, got {value!r}")

    def to_dict(self) -> dict[str, str | None]:
        return {"pattern": self.pattern, "field": self.field, "time_field": self.time_field}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionKey:
        unknown = sorted(set(data) - {"pattern", "field", "time_field"})
        if unknown:
            raise ValueError(f"unknown session key entries: {', '.join(unknown)}")
        return cls(pattern=data.get("pattern"), field=data.get("field"), time_field=data.get("time_field"))


# --------------------------------------------------------------------- state and results


@dataclass(slots=True)
class SessionState:
    """What the model keeps of one open session (see the module doc). Mutated by ``step``.

    ``context``: ids of the last ``order - 1`` patterns (start markers before the first ones).
    ``counts``: pattern id → occurrences, at most ``max_distinct`` ids plus the overflow bucket.
    ``events``: events so far. ``max_surprise``: the largest step surprise. ``previous``: the hash
    of the last pattern (``START_CODE`` before the first). ``decisive``: the first decisive step.
    ``unexpected``: the most surprising steps above the calibrated floor, at most
    ``max_unexpected``, in order of position. A step is ``(surprise, position, pattern, previous,
    expected)``, patterns as codes (hashes, or the ``*_CODE`` markers).
    """

    context: tuple[int, ...]
    counts: dict[int, int] = field(default_factory=dict)
    events: int = 0
    max_surprise: float = 0.0
    previous: int = START_CODE
    decisive: tuple[float, int, int, int, int] | None = None
    unexpected: list[tuple[float, int, int, int, int]] = field(default_factory=list)


class StepScore(NamedTuple):
    """One step's verdict: its surprise (nats) and whether it alone makes the session anomalous."""

    surprise: float
    decisive: bool


@dataclass(frozen=True, slots=True)
class UnexpectedStep:
    """A step (or the end) the model did not expect: ``position`` (0-based; the event count for
    the end), ``pattern`` / ``previous`` / ``expected`` (codes: ``expected`` is the model's most
    likely successor at that point), its ``surprise`` and calibrated ``evidence`` (nats)."""

    kind: str  # "step" or "end"
    position: int
    pattern: int
    previous: int
    expected: int
    surprise: float
    evidence: float

    def to_dict(self, templates: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON form; ``templates`` (pattern hash → text) adds the texts it knows."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "position": self.position,
            "pattern": pattern_label(self.pattern),
            "previous": pattern_label(self.previous),
            "expected": pattern_label(self.expected),
            "surprise": round(self.surprise, 4),
            "evidence": round(self.evidence, 4),
        }
        if templates is not None:
            for name, code in (("template", self.pattern), ("expected_template", self.expected)):
                text = templates.get(code)
                if text is not None:
                    out[name] = text
        return out


@dataclass(frozen=True, slots=True)
class SessionScore:
    """The verdict on a closed session (``reason``: why it closed, ``REASONS``), or on an open one
    from its steps so far (``reason`` ``"open"``, ``so_far``). ``score > 1.0`` ⇔ ``is_anomaly``;
    ``decisive``: a step alone had already decided it (the agent alerted then). ``evidence``: per
    component (nats);
    ``unexpected``: the unexpected steps and end, by position; ``signature``: 16 hex digits naming
    how it failed (its first decisive transition, else its most unexpected one, else its set of
    patterns), for grouping session alerts."""

    score: float
    is_anomaly: bool
    decisive: bool
    reason: str
    events: int
    evidence: dict[str, float]
    unexpected: tuple[UnexpectedStep, ...]
    signature: str


@dataclass(frozen=True)
class SessionSequence:
    """A closed training session: its pattern hashes in order and why it closed (``REASONS``)."""

    patterns: tuple[int, ...]
    reason: str = "gap"


# --------------------------------------------------------------------- the next-pattern table


class _NextPattern:
    """The back-off next-pattern table (module doc): context → (λ, successor → tail, most likely)."""

    def __init__(self, order: int, contexts: Mapping[tuple[int, ...], Mapping[int, int]]) -> None:
        self.order = order
        self.counts = {ctx: dict(successors) for ctx, successors in contexts.items()}
        self.table: dict[tuple[int, ...], tuple[float, dict[int, float], int]] = {}
        for ctx, successors in self.counts.items():
            total = sum(successors.values())
            tails: dict[int, float] = {}
            running = 0
            by_count = sorted(successors.items(), key=lambda item: item[1])
            i = 0
            while i < len(by_count):
                j = i
                while j < len(by_count) and by_count[j][1] == by_count[i][1]:
                    running += by_count[j][1]
                    j += 1
                for token, _ in by_count[i:j]:
                    tails[token] = running / total
                i = j
            likely = min(successors, key=lambda token: (-successors[token], token))
            self.table[ctx] = (len(successors) / (total + len(successors)), tails, likely)

    def surprise(self, context: tuple[int, ...], token: int) -> float:
        """``-log T(token | context)`` (module doc), at most ``_MAX_SURPRISE``."""
        table = self.table
        tail = 0.0
        weight = 1.0
        for k in range(len(context), -1, -1):
            entry = table.get(context[len(context) - k :])
            if entry is None:
                continue
            escape, tails, _ = entry
            share = tails.get(token)
            if share is not None:
                tail += weight * (1.0 - escape) * share
            weight *= escape
        tail += weight
        return min(max(-math.log(tail), 0.0), _MAX_SURPRISE) if tail > 0.0 else _MAX_SURPRISE

    def expected(self, context: tuple[int, ...], default: int) -> int:
        """The most likely successor id after the longest known suffix of ``context`` (``default``
        when the table is empty)."""
        for k in range(len(context), -1, -1):
            entry = self.table.get(context[len(context) - k :])
            if entry is not None:
                return entry[2]
        return default


# --------------------------------------------------------------------- the count reference

#: Count vectors whose distance is memoised (dropped all at once when full; ~200 bytes each).
_DISTANCE_CACHE = 20_000


class _CountReference:
    """Distinct count vectors of normal sessions (CSR over pattern ids) with how many fit sessions
    had each (``weights``), and the mean L1 distance of a session's count vector to its ``k``
    nearest fit sessions (a vector shared by at least ``k`` of them is at distance 0; one seen
    once is still a little unusual). Per reference row ``|q| + |r| - 2 Σ min(q, r)``, the sum over
    the pattern ids the session has (one column slice each), so the cost is the reference entries
    of the session's patterns, not the reference size times the vocabulary. Sessions of a keyed
    log repeat a few count vectors (HDFS: most normal blocks have one of a handful), so distances
    are memoised by vector (at most ``_DISTANCE_CACHE`` of them): a repeated vector costs a sort of
    its few entries instead of about 40 µs."""

    def __init__(
        self,
        indptr: IntArray,
        indices: IntArray,
        data: IntArray,
        weights: IntArray,
        *,
        n_columns: int,
        k: int,
    ) -> None:
        from scipy.sparse import csr_matrix

        rows = len(indptr) - 1
        if len(weights) != rows or (rows and int(weights.min()) < 1):
            raise ValueError("count reference: one weight >= 1 per reference vector is needed")
        matrix = csr_matrix((data.astype(np.float64), indices, indptr), shape=(rows, n_columns))
        self.indptr, self.indices, self.data, self.weights = indptr, indices, data, weights
        self.k = k
        self._norms = np.asarray(matrix.sum(axis=1), dtype=np.float64).reshape(-1)
        csc = matrix.tocsc()
        self._col_ptr = csc.indptr.astype(np.int64)
        self._col_rows = csc.indices.astype(np.int64)
        self._col_vals = csc.data.astype(np.float64)
        self._memo: dict[tuple[tuple[int, int], ...], float] = {}

    def __len__(self) -> int:
        return len(self._norms)

    def distance(self, counts: Mapping[int, int]) -> float:
        vector = tuple(sorted(counts.items()))
        known = self._memo.get(vector)
        if known is None:
            if len(self._memo) >= _DISTANCE_CACHE:
                self._memo.clear()
            known = self._memo[vector] = self._distance(counts)
        return known

    def _distance(self, counts: Mapping[int, int]) -> float:
        total = float(sum(counts.values()))
        if not len(self._norms):
            return total
        overlap = np.zeros(len(self._norms), dtype=np.float64)
        ptr, rows, vals = self._col_ptr, self._col_rows, self._col_vals
        n_columns = len(ptr) - 1
        for token, count in counts.items():
            if 0 <= token < n_columns:
                a, b = ptr[token], ptr[token + 1]
                if b > a:
                    overlap[rows[a:b]] += np.minimum(vals[a:b], float(count))
        distances = np.maximum(self._norms + total - 2.0 * overlap, 0.0)
        nearest = min(self.k, len(distances))
        candidates = np.argpartition(distances, nearest - 1)[:nearest]
        candidates = candidates[np.lexsort((candidates, distances[candidates]))]
        # The k nearest fit sessions, counting each distinct vector as often as it was seen.
        taken = np.minimum(np.cumsum(self.weights[candidates]), self.k)
        share = np.diff(taken, prepend=0).astype(np.float64)
        return float(np.dot(share, distances[candidates]) / taken[-1])


# --------------------------------------------------------------------- the model


class SessionModel:
    """Next-pattern table + count reference + calibration; see the module doc.

    Build one with ``fit`` (or ``load``). Per session: ``new_state()``, ``step(state, pattern)``
    per event, ``close(state, reason)`` once. Pure: the same events in the same order give the same
    results whatever else happens; nothing here reads a clock or keeps per-session data.
    """

    def __init__(
        self,
        *,
        order: int,
        windows: SessionWindows,
        vocab: npt.NDArray[np.uint64],
        contexts: Mapping[tuple[int, ...], Mapping[int, int]],
        reference: tuple[IntArray, IntArray, IntArray, IntArray],
        nulls: Mapping[str, Float64Array],
        threshold: float,
        target_fpr: float,
        templates: Sequence[str] | None = None,
        max_distinct: int = DEFAULT_MAX_DISTINCT,
        max_unexpected: int = DEFAULT_MAX_UNEXPECTED,
        neighbours: int = DEFAULT_NEIGHBOURS,
        limits: Mapping[str, int] | None = None,
        fit_summary: Mapping[str, Any] | None = None,
        key: SessionKey | None = None,
    ) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if min(max_distinct, max_unexpected, neighbours) < 1:
            raise ValueError("max_distinct, max_unexpected and neighbours must be >= 1")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold}")
        self.order = int(order)
        self.windows = windows
        self.target_fpr = check_target_fpr(target_fpr)
        self.threshold = float(threshold)
        self.max_distinct = int(max_distinct)
        self.max_unexpected = int(max_unexpected)
        self.neighbours = int(neighbours)
        self.limits = dict(limits or {})
        self.fit_summary: dict[str, Any] = dict(fit_summary or {})
        #: where training read the session keys and times (None: not recorded).
        self.key = key
        self.vocab = np.asarray(vocab, dtype=np.uint64)
        n = len(self.vocab)
        # Pattern ids: 0..n-1 the vocabulary, then the unknown pattern, the start padding, the end,
        # and the overflow bucket of the bounded count vector.
        self.unk, self.start, self.end, self.overflow = n, n + 1, n + 2, n + 3
        self._ids: dict[int, int] = {int(h): i for i, h in enumerate(self.vocab.tolist())}
        if len(self._ids) != n:
            raise ValueError("session model vocabulary holds a pattern hash twice")
        self._codes: list[int] = [*self.vocab.tolist(), UNKNOWN_CODE, START_CODE, END_CODE, UNKNOWN_CODE]
        self.templates: dict[int, str] = {}
        if templates is not None:
            if len(templates) != n or not all(isinstance(t, str) for t in templates):
                raise ValueError(f"expected {n} template strings, one per vocabulary pattern")
            self.templates = {int(h): t for h, t in zip(self.vocab.tolist(), templates, strict=True)}
        ids = {t for ctx, successors in contexts.items() for t in (*ctx, *successors)}
        if ids and not (min(ids) >= 0 and max(ids) <= self.overflow):
            raise ValueError(f"next-pattern table holds pattern ids outside 0..{self.overflow}")
        if any(len(ctx) >= self.order for ctx in contexts):
            raise ValueError(f"next-pattern table holds a context longer than order - 1 = {self.order - 1}")
        self._next = _NextPattern(self.order, contexts)
        self._reference = _CountReference(*reference, n_columns=n + 4, k=self.neighbours)
        self.nulls = {name: np.sort(np.asarray(nulls.get(name, ()), dtype=np.float64)) for name in COMPONENTS}
        self._tails = {name: _Tail(_scaled(name, null)) for name, null in self.nulls.items() if len(null)}
        self._start_context = (self.start,) * (self.order - 1)
        null_step = self.nulls["step"]
        # Steps above the least surprising held-out session maximum have evidence > 0.
        self._floor = float(null_step[0]) if len(null_step) else math.inf
        self._decisive_surprise = self._crossing(self.threshold)
        digest = hashlib.sha256(f"{self.order}:{self.max_distinct}:{self.max_unexpected}:".encode("ascii"))
        digest.update(self.vocab.astype(">u8").tobytes())
        #: names what a ``SessionState`` means (its pattern ids and bounds): a state written under
        #: one fingerprint must not be read under another.
        self.fingerprint = digest.hexdigest()[:16]

    # ----------------------------------------------------------------- per session

    def new_state(self) -> SessionState:
        """The state of a session that has seen no event yet."""
        return SessionState(context=self._start_context)

    def step(self, state: SessionState, pattern: int) -> StepScore:
        """Score the next event of the session, whose prepared text has hash ``pattern``, and fold
        it into ``state``. 2-5 µs on a shared 2-core machine (docs/sessions.md)."""
        token = self._ids.get(pattern, self.unk)
        context = state.context
        surprise = self._next.surprise(context, token)
        position = state.events
        state.events = position + 1
        _bump(state.counts, token, self.max_distinct, self.overflow)
        if self.order > 1:
            state.context = (*context[1:], token)
        previous = state.previous
        state.previous = pattern
        if surprise > state.max_surprise:
            state.max_surprise = surprise
        decisive = surprise > self._decisive_surprise
        if surprise > self._floor:
            entry = (
                surprise,
                position,
                pattern,
                previous,
                self._codes[self._next.expected(context, self.unk)],
            )
            if decisive and state.decisive is None:
                state.decisive = entry
            self._keep(state.unexpected, entry)
        return StepScore(surprise, decisive)

    def close(self, state: SessionState, reason: str) -> SessionScore:
        """The verdict on a session closed for ``reason`` (``REASONS``); ``state`` is not changed.
        60-90 µs on the benchmark's model when the count distance is computed (most of it), a few
        µs when the session's count vector was seen before (memoised)."""
        if reason not in REASONS:
            raise ValueError(f"unknown close reason {reason!r} (one of {', '.join(REASONS)})")
        return self._verdict(state, reason, self._measures(state, reason))

    def so_far(self, state: SessionState) -> SessionScore:
        """The verdict on an open session from its steps alone (reason ``"open"``): what a decisive
        step's alert reports. Its score can only grow until the close."""
        return self._verdict(state, "open", {"step": state.max_surprise})

    def _measures(self, state: SessionState, reason: str) -> dict[str, float]:
        """The raw measures of a session closed for ``reason`` (module doc)."""
        measures = {"step": state.max_surprise}
        if reason in ENDED_REASONS:
            measures["end"] = self._next.surprise(state.context, self.end)
        if reason != "evicted":
            measures["counts"] = self._reference.distance(state.counts)
        return measures

    def _verdict(self, state: SessionState, reason: str, measures: Mapping[str, float]) -> SessionScore:
        evidence = {name: self._evidence(name, value) for name, value in measures.items()}
        score = sum(evidence.values()) / self.threshold
        steps = [self._unexpected("step", entry) for entry in state.unexpected]
        if evidence.get("end", 0.0) > 0.0:
            expected = self._codes[self._next.expected(state.context, self.unk)]
            end = (measures["end"], state.events, END_CODE, state.previous, expected)
            steps.append(self._unexpected("end", end))
        return SessionScore(
            score=score,
            is_anomaly=score > 1.0,
            decisive=state.decisive is not None,
            reason=reason,
            events=state.events,
            evidence={name: round(value, 6) for name, value in evidence.items()},
            unexpected=tuple(steps),
            signature=self._signature(state, steps),
        )

    @property
    def decisive_surprise(self) -> float:
        """The step surprise above which a step is decisive (infinite: none can be)."""
        return self._decisive_surprise

    def template(self, pattern: int) -> str | None:
        """The prepared text of a vocabulary pattern (when the model keeps templates)."""
        return self.templates.get(pattern)

    def __contains__(self, pattern: int) -> bool:
        return pattern in self._ids

    # ----------------------------------------------------------------- internals

    def _keep(
        self, kept: list[tuple[float, int, int, int, int]], entry: tuple[float, int, int, int, int]
    ) -> None:
        """Keep the ``max_unexpected`` most surprising steps (the earliest of equals), by position."""
        if len(kept) >= self.max_unexpected:
            weakest = min(range(len(kept)), key=lambda i: (kept[i][0], -kept[i][1]))
            if kept[weakest][0] >= entry[0]:
                return
            del kept[weakest]
        kept.append(entry)

    def _unexpected(self, kind: str, entry: tuple[float, int, int, int, int]) -> UnexpectedStep:
        surprise, position, pattern, previous, expected = entry
        evidence = self._evidence(kind, surprise)
        return UnexpectedStep(kind, position, pattern, previous, expected, surprise, round(evidence, 6))

    def _evidence(self, name: str, value: float) -> float:
        """Calibrated evidence of one measure's value (module doc); 0 without a held-out value."""
        tail = self._tails.get(name)
        if tail is None:
            return 0.0
        return tail(value + 1.0 if name == "counts" else math.exp(min(value, _MAX_SURPRISE)))

    def _crossing(self, threshold: float) -> float:
        """The smallest surprise found (bisection) whose step evidence exceeds ``threshold``; every
        larger surprise has more (the evidence is monotone), so ``surprise > crossing`` ⇒ decisive."""
        if not len(self.nulls["step"]) or self._evidence("step", _MAX_SURPRISE) <= threshold:
            return math.inf
        low, high = 0.0, _MAX_SURPRISE
        for _ in range(80):
            mid = (low + high) / 2
            if self._evidence("step", mid) > threshold:
                high = mid
            else:
                low = mid
        return high

    def _signature(self, state: SessionState, steps: Sequence[UnexpectedStep]) -> str:
        if state.decisive is not None:
            _, _, pattern, previous, _ = state.decisive
            text = f"step:{pattern_label(previous)}>{pattern_label(pattern)}"
        elif steps:
            top = max(steps, key=lambda s: (s.evidence, -s.position))
            text = f"{top.kind}:{pattern_label(top.previous)}>{pattern_label(top.pattern)}"
        else:
            patterns = sorted(pattern_label(self._codes[token]) for token in state.counts)
            text = "counts:" + ",".join(patterns)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    # ----------------------------------------------------------------- fitting

    @classmethod
    def blank(cls, windows: SessionWindows, *, max_distinct: int = DEFAULT_MAX_DISTINCT) -> SessionModel:
        """A model that has seen nothing and finds nothing unusual: what cuts sessions (a tracker
        needs a model) before there is one to score them, so training cuts sessions with the
        very code the agent runs."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(
            order=1,
            windows=windows,
            vocab=np.zeros(0, dtype=np.uint64),
            contexts={},
            reference=(np.zeros(1, dtype=np.int64), empty, empty, empty),
            nulls={},
            threshold=1.0,
            target_fpr=DEFAULT_TARGET_FPR,
            max_distinct=max_distinct,
        )

    @classmethod
    def fit(
        cls,
        sessions: Sequence[SessionSequence],
        *,
        windows: SessionWindows,
        order: int = DEFAULT_ORDER,
        target_fpr: float = DEFAULT_TARGET_FPR,
        folds: int = DEFAULT_FOLDS,
        seed: int = 0,
        templates: Mapping[int, str] | None = None,
        max_vocab: int = DEFAULT_MAX_VOCAB,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
        max_reference: int = DEFAULT_MAX_REFERENCE,
        max_distinct: int = DEFAULT_MAX_DISTINCT,
        max_unexpected: int = DEFAULT_MAX_UNEXPECTED,
        neighbours: int = DEFAULT_NEIGHBOURS,
        key: SessionKey | None = None,
    ) -> SessionModel:
        """Fit on normal ``sessions`` (cut by ``windows``, as the agent will cut them).

        **Cross-fitted calibration.** The sessions are dealt into ``folds`` seeded random folds;
        for each fold a model fitted on the other folds measures it, so *every* normal session
        gets held-out measures, and the model returned is fitted on all of them. A 1-in-1000
        threshold set on 20 % of a few thousand sessions rests on one or two of them and moved by
        up to 3 nats between the benchmark's splits; on all of them it rests on five times as
        many. The measures come from models that saw 1 - 1/folds of the data, so the final model
        (which saw all of it) is if anything less surprised on fresh normal sessions: the
        false-positive rate errs low. Cost: ``folds + 1`` table builds (HDFS, 9,500 sessions:
        about 2 s in all).

        ``templates``: prepared text per pattern hash, kept (cut to ``TEMPLATE_MAX_CHARS``) for the
        vocabulary so alerts can show them. ``key``: where the sessions' keys came from (stored
        with the model). ValueError for fewer than 2 sessions or bad bounds."""
        check_target_fpr(target_fpr)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        if len(sessions) < 2:
            raise ValueError(f"need at least 2 normal sessions to fit and calibrate, got {len(sessions)}")
        if min(max_vocab, max_contexts, max_reference) < 1:
            raise ValueError("max_vocab, max_contexts and max_reference must be >= 1")
        for s in sessions:
            if s.reason not in REASONS or not s.patterns:
                raise ValueError(f"a training session needs patterns and a reason from {REASONS}")
        shared: dict[str, Any] = {
            "order": order,
            "windows": windows,
            "target_fpr": target_fpr,
            "max_distinct": max_distinct,
            "max_unexpected": max_unexpected,
            "neighbours": neighbours,
            "limits": {"max_vocab": max_vocab, "max_contexts": max_contexts, "max_reference": max_reference},
        }
        bounds = (max_vocab, max_contexts, max_reference, max_distinct)
        fold_of = np.random.default_rng(seed).permutation(len(sessions)) % min(folds, len(sessions))
        measures: dict[str, list[float]] = {name: [] for name in COMPONENTS}
        members: dict[str, list[int]] = {name: [] for name in COMPONENTS}
        for fold in range(int(fold_of.max()) + 1):
            inside = [sessions[i] for i in np.flatnonzero(fold_of != fold).tolist()]
            # A model without calibration (no decisive steps, no unexpected steps kept).
            blank = cls(**shared, **_tables(inside, order, *bounds), nulls={}, threshold=1.0)
            for i in np.flatnonzero(fold_of == fold).tolist():
                state = blank.new_state()
                for pattern in sessions[i].patterns:
                    blank.step(state, pattern)
                for name, value in blank._measures(state, sessions[i].reason).items():
                    measures[name].append(value)
                    members[name].append(i)
        raw = np.zeros(len(sessions), dtype=np.float64)
        nulls: dict[str, Float64Array] = {}
        for name in COMPONENTS:
            values = np.asarray(measures[name], dtype=np.float64)
            ranks = np.argsort(values, kind="stable")
            nulls[name] = values[ranks]
            if len(values):
                evidence = np.empty(len(values), dtype=np.float64)
                evidence[ranks] = held_out_evidence(_scaled(name, nulls[name]))
                np.add.at(raw, np.asarray(members[name], dtype=np.int64), evidence)
        tables = _tables(sessions, order, *bounds)
        vocab = tables["vocab"]
        texts = None
        if templates is not None:
            texts = [templates.get(int(p), "")[:TEMPLATE_MAX_CHARS] for p in vocab.tolist()]
        summary = {
            "sessions": len(sessions),
            "events": int(sum(len(s.patterns) for s in sessions)),
            "ended_sessions": len(measures["end"]),
            "folds": int(fold_of.max()) + 1,
            "seed": seed,
        }
        threshold = quantile_threshold(raw, target_fpr)
        return cls(
            **shared,
            **tables,
            templates=texts,
            nulls=nulls,
            threshold=threshold,
            fit_summary=summary,
            key=key,
        )

    # ----------------------------------------------------------------- persistence

    def save(self, directory: Path) -> list[Path]:
        """Write the model into ``directory`` (created): ``session_model.json`` and ``session_*.npy``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._next.counts, key=lambda c: (len(c), c))
        width = max(self.order - 1, 1)
        ctx = np.full((len(keys), width), -1, dtype=np.int64)
        lengths = np.fromiter((len(c) for c in keys), dtype=np.int64, count=len(keys))
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        successors: list[int] = []
        counts: list[int] = []
        for row, c in enumerate(keys):
            if c:
                ctx[row, width - len(c) :] = c
            for token, count in sorted(self._next.counts[c].items()):
                successors.append(token)
                counts.append(count)
            offsets[row + 1] = len(successors)
        reference = self._reference
        arrays: dict[str, npt.NDArray[Any]] = {
            "vocab": self.vocab,
            "contexts": ctx,
            "context_lengths": lengths,
            "successor_offsets": offsets,
            "successors": np.asarray(successors, dtype=np.int64),
            "successor_counts": np.asarray(counts, dtype=np.int64),
            "reference_indptr": reference.indptr,
            "reference_indices": reference.indices,
            "reference_data": reference.data,
            "reference_weights": reference.weights,
        } | {f"null_{name}": self.nulls[name] for name in COMPONENTS}
        written: list[Path] = []
        for name, array in arrays.items():
            path = directory / f"session_{name}.npy"
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
            written.append(path)
        meta = {
            "format": FORMAT_VERSION,
            "order": self.order,
            "windows": self.windows.to_dict(),
            "target_fpr": self.target_fpr,
            "threshold": self.threshold,
            "max_distinct": self.max_distinct,
            "max_unexpected": self.max_unexpected,
            "neighbours": self.neighbours,
            "limits": self.limits,
            "fit": self.fit_summary,
            "key": None if self.key is None else self.key.to_dict(),
            "templates": None
            if not self.templates
            else [self.templates[int(h)] for h in self.vocab.tolist()],
        }
        path = directory / MODEL_FILE
        path.write_text(json.dumps(meta, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
        return [path, *written]

    @classmethod
    def load(cls, directory: Path) -> SessionModel:
        """Read what ``save`` wrote; ValueError naming the problem for anything malformed."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / MODEL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"session model {directory}: cannot read {MODEL_FILE} ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"session model {directory}: unsupported format (this agent reads {FORMAT_VERSION})"
            )

        def array(name: str) -> npt.NDArray[Any]:
            try:
                return np.asarray(np.load(directory / f"session_{name}.npy", allow_pickle=False))
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"session model {directory}: cannot read session_{name}.npy ({exc})"
                ) from None

        try:
            order = int(meta["order"])
            ctx, lengths = array("contexts").astype(np.int64), array("context_lengths").astype(np.int64)
            offsets = array("successor_offsets").astype(np.int64)
            successors, counts = (
                array("successors").astype(np.int64),
                array("successor_counts").astype(np.int64),
            )
            if ctx.ndim != 2 or len(ctx) != len(lengths) or len(offsets) != len(ctx) + 1:
                raise ValueError("context arrays disagree in length")
            if len(successors) != len(counts) or (len(offsets) and offsets[-1] != len(successors)):
                raise ValueError("successor arrays disagree in length")
            contexts: dict[tuple[int, ...], dict[int, int]] = {}
            width = ctx.shape[1]
            for row in range(len(ctx)):
                n = int(lengths[row])
                key = tuple(ctx[row, width - n :].tolist()) if n else ()
                a, b = int(offsets[row]), int(offsets[row + 1])
                contexts[key] = dict(zip(successors[a:b].tolist(), counts[a:b].tolist(), strict=True))
            reference = (
                array("reference_indptr").astype(np.int64),
                array("reference_indices").astype(np.int64),
                array("reference_data").astype(np.int64),
                array("reference_weights").astype(np.int64),
            )
            return cls(
                order=order,
                windows=SessionWindows.from_dict(meta["windows"]),
                vocab=array("vocab").astype(np.uint64),
                contexts=contexts,
                reference=reference,
                nulls={name: array(f"null_{name}").astype(np.float64) for name in COMPONENTS},
                threshold=float(meta["threshold"]),
                target_fpr=float(meta["target_fpr"]),
                templates=meta.get("templates"),
                max_distinct=int(meta["max_distinct"]),
                max_unexpected=int(meta["max_unexpected"]),
                neighbours=int(meta["neighbours"]),
                limits=meta.get("limits") or {},
                fit_summary=meta.get("fit") or {},
                key=None if meta.get("key") is None else SessionKey.from_dict(meta["key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"session model {directory}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """What the training summary and docs show of the model."""
        return {
            "order": self.order,
            "windows": self.windows.to_dict(),
            "target_fpr": self.target_fpr,
            "threshold": round(self.threshold, 6),
            "decisive_surprise": None
            if math.isinf(self._decisive_surprise)
            else round(self._decisive_surprise, 6),
            "vocabulary": len(self.vocab),
            "contexts": len(self._next.table),
            "reference_vectors": len(self._reference),
            "held_out": {name: len(self.nulls[name]) for name in COMPONENTS},
            "max_distinct": self.max_distinct,
            "max_unexpected": self.max_unexpected,
            "neighbours": self.neighbours,
            "key": None if self.key is None else self.key.to_dict(),
            "fit": self.fit_summary,
        }


def _bump(counts: dict[int, int], token: int, max_distinct: int, overflow: int) -> None:
    """Count ``token`` in a count vector of at most ``max_distinct`` ids plus the overflow bucket."""
    if token in counts:
        counts[token] += 1
    elif len(counts) < max_distinct:
        counts[token] = 1
    else:
        counts[overflow] = counts.get(overflow, 0) + 1


def _tables(
    sessions: Sequence[SessionSequence],
    order: int,
    max_vocab: int,
    max_contexts: int,
    max_reference: int,
    max_distinct: int,
) -> dict[str, Any]:
    """The vocabulary, next-pattern counts and count reference of ``sessions`` (constructor keywords)."""
    frequency = Counter(p for s in sessions for p in s.patterns)
    ranked = sorted(frequency, key=lambda p: (-frequency[p], p))[:max_vocab]
    ids = {p: i for i, p in enumerate(ranked)}
    n = len(ranked)
    unk, start, end, overflow = n, n + 1, n + 2, n + 3
    contexts: dict[tuple[int, ...], Counter[int]] = {}
    vectors: Counter[tuple[tuple[int, int], ...]] = Counter()
    for s in sessions:
        tokens = [ids.get(p, unk) for p in s.patterns]
        counts: dict[int, int] = {}
        for token in tokens:
            _bump(counts, token, max_distinct, overflow)
        vectors[tuple(sorted(counts.items()))] += 1
        if s.reason in ENDED_REASONS:
            tokens.append(end)
        padded = [start] * (order - 1) + tokens
        for i in range(order - 1, len(padded)):
            for k in range(order):
                contexts.setdefault(tuple(padded[i - k : i]), Counter())[padded[i]] += 1
    # The empty context always stays; then the most used ones.
    kept = sorted(contexts, key=lambda c: (len(c) > 0, -sum(contexts[c].values()), c))[:max_contexts]
    reference = sorted(vectors, key=lambda v: (-vectors[v], v))[:max_reference]
    indptr = np.zeros(len(reference) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(v) for v in reference])
    indices = np.fromiter((t for v in reference for t, _ in v), dtype=np.int64, count=int(indptr[-1]))
    data = np.fromiter((c for v in reference for _, c in v), dtype=np.int64, count=int(indptr[-1]))
    weights = np.asarray([vectors[v] for v in reference], dtype=np.int64)
    return {
        "vocab": np.asarray(ranked, dtype=np.uint64),
        "contexts": {c: contexts[c] for c in kept},
        "reference": (indptr, indices, data, weights),
    }


class _Tail:
    """``calibration.tail_evidence`` of one value against a fixed null, with the null's distinct
    values and counts computed once: about 1 µs per value instead of a sort of the null per call
    (tests/test_sessions.py checks both agree). The null here is always positive (``_scaled``)."""

    def __init__(self, null: Float64Array) -> None:
        distinct, first = np.unique(null, return_index=True)
        self.m = len(null)
        self.xs: list[float] = distinct.tolist()
        self.ys: list[float] = (self.m - first).astype(np.float64).tolist()
        self.top = self.xs[-1]
        if not self.top > 0:
            raise ValueError("a session model's held-out values must be positive once scaled")

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        i = bisect_right(xs, x)
        if i == 0:
            at_least = ys[0]
        elif i == len(xs):
            at_least = ys[-1]
        else:
            x0 = xs[i - 1]
            at_least = ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (xs[i] - x0)
        ratio = x / self.top
        if x > self.top:
            at_least /= ratio
        return -math.log((1.0 + at_least) / (self.m + 1.0)) + math.log(max(ratio, 1.0))


def _scaled(name: str, values: Float64Array) -> Float64Array:
    """The scale a measure's tail is compared on (module doc): ``e^x`` for surprises, ``x + 1``
    for the count distance."""
    if name == "counts":
        return values + 1.0
    return np.exp(np.minimum(values, _MAX_SURPRISE))


# --------------------------------------------------------------------- state codec


def state_to_dict(state: SessionState) -> dict[str, Any]:
    """``state`` as a JSON object (version ``STATE_VERSION``); ``state_from_dict`` inverts it exactly
    (floats survive a JSON round trip: ``repr`` is shortest-exact)."""
    return {
        "v": STATE_VERSION,
        "context": list(state.context),
        "counts": [[token, count] for token, count in state.counts.items()],
        "events": state.events,
        "max_surprise": state.max_surprise,
        "previous": state.previous,
        "decisive": None if state.decisive is None else list(state.decisive),
        "unexpected": [list(entry) for entry in state.unexpected],
    }


def state_from_dict(doc: Any, model: SessionModel | None = None) -> SessionState:
    """Inverse of ``state_to_dict``; ValueError naming the problem for anything else. With
    ``model``, also checks that the state fits it (context length, pattern ids, bounds)."""
    what = "session model state"
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object")
    if doc.get("v") != STATE_VERSION:
        raise ValueError(f"{what}: unsupported version {doc.get('v')!r} (this agent reads {STATE_VERSION})")
    context = _int_list(doc.get("context"), f"{what}: context")
    raw_counts = doc.get("counts")
    if not isinstance(raw_counts, list):
        raise ValueError(f"{what}: counts must be a list of [id, count] pairs")
    counts: dict[int, int] = {}
    for pair in raw_counts:
        token, count = _int_list(pair, f"{what}: a counts entry", length=2)
        if token < 0 or count < 1 or token in counts:
            raise ValueError(f"{what}: counts entry {pair!r} is invalid or repeated")
        counts[token] = count
    events = _int(doc.get("events"), f"{what}: events")
    previous = _int(doc.get("previous"), f"{what}: previous")
    max_surprise = doc.get("max_surprise")
    if isinstance(max_surprise, bool) or not isinstance(max_surprise, int | float):
        raise ValueError(f"{what}: max_surprise must be a number")
    max_surprise = float(max_surprise)
    if not (0.0 <= max_surprise <= _MAX_SURPRISE):
        raise ValueError(f"{what}: max_surprise {max_surprise} out of range")
    decisive = None if doc.get("decisive") is None else _entry(doc.get("decisive"), what)
    raw_unexpected = doc.get("unexpected")
    if not isinstance(raw_unexpected, list):
        raise ValueError(f"{what}: unexpected must be a list")
    unexpected = [_entry(item, what) for item in raw_unexpected]
    if events < 1 or sum(counts.values()) != events:
        raise ValueError(f"{what}: {events} events but counts sum to {sum(counts.values())}")
    if any(entry[1] >= events for entry in [*unexpected, *([decisive] if decisive else [])]):
        raise ValueError(f"{what}: an unexpected step lies beyond the session's {events} events")
    if model is not None:
        n_ids = len(model.vocab) + 4
        if len(context) != model.order - 1 or any(not 0 <= t < n_ids for t in [*context, *counts]):
            raise ValueError(f"{what}: does not fit the session model (context or pattern ids)")
        if len(counts) > model.max_distinct + 1 or len(unexpected) > model.max_unexpected:
            raise ValueError(f"{what}: larger than the session model's bounds")
    return SessionState(
        context=tuple(context),
        counts=counts,
        events=events,
        max_surprise=max_surprise,
        previous=previous,
        decisive=decisive,
        unexpected=unexpected,
    )


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _int_list(value: Any, what: str, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ValueError(f"{what} must be a list of {length or 'any number of'} integers")
    return [_int(v, what) for v in value]


def _entry(value: Any, what: str) -> tuple[float, int, int, int, int]:
    if not isinstance(value, list) or len(value) != 5:
        raise ValueError(f"{what}: a step must be [surprise, position, pattern, previous, expected]")
    surprise = value[0]
    if (
        isinstance(surprise, bool)
        or not isinstance(surprise, int | float)
        or not 0 <= surprise <= _MAX_SURPRISE
    ):
        raise ValueError(f"{what}: a step's surprise must be a number in [0, {_MAX_SURPRISE}]")
    position, pattern, previous, expected = (_int(v, f"{what}: a step's fields") for v in value[1:])
    if position < 0:
        raise ValueError(f"{what}: a step's position must be >= 0")
    return (float(surprise), position, pattern, previous, expected)
