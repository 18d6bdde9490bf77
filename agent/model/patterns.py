"""Patterns: each distinct prepared text is embedded and scored once, then looked up.

The embedder only ever sees the *prepared* text (``TextPreparation.prepare``: variables masked,
whitespace collapsed, truncated), and a detector scores every vector on its own. So two events
with the same prepared text get the same vector, the same score and the same cluster: computing
it again is pure waste, and real logs repeat (222,579 HDFS lines → 32 distinct prepared texts).

``PatternTable`` maps a prepared text — the *pattern* — to what the model said about it
(``PatternScore``: score, raw distance, nearest cluster, and for an anomalous pattern what its
alert shows: whether training saw it, its nearest training examples). It belongs to one model: the pipeline
starts a fresh table when it swaps in a new bundle, so nothing scored by an old model leaks into
the new one. It is bounded: at most ``max_entries`` patterns, least recently used evicted first.
Python's dict hashes the text and compares it on a hash match, so a lookup is exact by
construction; the text stays available for alerts.

``score_patterns`` is the one scoring path of the agent, ``anomaly-agent score`` and
``evaluate``: it looks every text up, embeds and scores each distinct missing one once (in one
embedder call: the embedder's token budget bounds each model run), and stores the results. A hit
returns exactly what the miss computed; a miss computed in another batch may differ from a fresh
one by float rounding of the batch's BLAS kernels (≤ 1e-4 relative, see the detector contract
suite), far below any threshold decision.

**The value view** (agent.model.values). With a bundle's ``ValueView`` passed as ``values``, each
computed pattern is also *bound* once, on the miss (``ValueView.bind``: its slots and its pattern
evidence), and the ``PatternScore`` keeps the ``BoundPattern``. An event's score is then its
pattern's score fused with the evidence of its own values — what masking replaced, different for
every event — so it is computed per event, on the hit path, by ``event_score(pattern_score,
slot_values)``: the one per-event call of the agent, ``score`` and ``evaluate``, a few µs (only
the value checks: the table still saves the embedding and the detector). Without a value view
``event_score`` returns the pattern's score unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.model.detectors.base import Detector
from agent.model.embedder import Embedder
from agent.model.examples import Examples, KnownPatterns
from agent.model.textprep import SlotValues
from agent.model.values import BoundPattern, ValueFinding, ValueView

# ~100,000 patterns: about 50 MB (a 150-character text, its score and the table's links), within
# the agent's 500 MiB memory target; real log streams have hundreds to a few thousand patterns.
DEFAULT_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class PatternScore:
    """What the model said about one pattern: the ``Detector.score`` row of its vector; for an
    anomalous one (score > 1.0) also ``known`` (the exact prepared text was in the normal training
    data; None when the bundle does not record it) and ``neighbours``, the nearest training
    examples as (text, cosine similarity), computed once with the vector at hand.

    With a value view, ``values`` is the pattern bound to it (``ValueView.bind``, once per
    pattern) and an *event*'s score is ``event_score(this, its slot values)``, not ``score``
    (which stays the detector's, the pattern part). Then ``known`` is filled for every pattern
    (any event may alert through its values) and ``neighbours`` for the patterns whose events
    are anomalous even without value evidence (``values.base_score > 1.0``) or whose detector
    score is.
    """

    score: float
    distance: float
    cluster: int
    known: bool | None = None
    neighbours: tuple[tuple[str, float], ...] = ()
    values: BoundPattern | None = None

    @property
    def anomalous(self) -> bool:
        """Whether an event of this pattern is anomalous without value evidence."""
        return (self.score if self.values is None else self.values.base_score) > 1.0


def event_score(pattern: PatternScore, values: SlotValues | None) -> tuple[float, ValueFinding | None]:
    """An event's score (> 1.0: anomalous) and, when its values made or helped make it anomalous,
    the unusual value (``ValueFinding``: slot, value, what normal looks like; the alert's ``value``).

    ``pattern``: its pattern's ``PatternScore`` (a table hit or a fresh miss); ``values``: what its
    placeholders replaced (``TextPreparation.prepare_values(raw)[1]``; None when not extracted).
    Without a value view in the bundle (``pattern.values`` None) it is ``(pattern.score, None)``.
    With one, ``BoundPattern.decide``: the fused score ``(e_p + e_v) / T`` of agent.model.values,
    computed from the event's own values — the only per-event model work on a table hit. The one
    function the agent, ``anomaly-agent score`` and ``evaluate`` call per event, so they decide
    alike.
    """
    bound = pattern.values
    if bound is None:
        return pattern.score, None
    return bound.decide(None if values is None else values.values)


@dataclass(frozen=True)
class AlertContext:
    """What the bundle knows about its training patterns, for anomalous patterns' alerts."""

    known: KnownPatterns | None = None
    examples: Examples | None = None
    neighbours: int = 0


class PatternTable:
    """Bounded LRU map prepared text → ``PatternScore`` for the model ``model_sha256``.

    Counters only grow; readers take differences. ``misses`` counts events whose pattern had to
    be computed (the first event of a pattern the table did not know), ``hits`` every other event
    (known patterns, and repeats of a new one in the same call). Not thread-safe: one loop owns it.
    """

    def __init__(self, model_sha256: str, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.model_sha256 = model_sha256
        self.max_entries = max_entries
        self._entries: OrderedDict[str, PatternScore] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> PatternScore | None:
        """The pattern's score, marked as recently used; None when unknown."""
        entry = self._entries.get(text)
        if entry is not None:
            self._entries.move_to_end(text)
        return entry

    def put(self, text: str, entry: PatternScore) -> None:
        """Store ``entry`` for ``text``, evicting the least recently used beyond ``max_entries``."""
        self._entries[text] = entry
        self._entries.move_to_end(text)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1


def score_patterns(
    texts: Sequence[str],
    *,
    embedder: Embedder,
    detector: Detector,
    table: PatternTable | None,
    on_failure: Callable[[str, Exception], None] | None = None,
    dedup: bool = True,
    context: AlertContext | None = None,
    progress: Callable[[], None] | None = None,
    values: ValueView | None = None,
) -> list[PatternScore | None]:
    """Scores of ``texts`` (prepared), in order. Each distinct text missing from ``table`` (all of
    them when ``table`` is None) is embedded and scored once per call; with ``dedup=False`` (and
    no table) every text is embedded and scored on its own row, as without patterns.

    When scoring the missing texts together fails, each is retried alone; a text that fails alone
    gets None, and ``on_failure(text, exception)`` is called once for it (without ``on_failure``
    the first exception is raised). Results are stored in ``table`` only when computed.
    ``context`` fills ``known`` and ``neighbours`` of the anomalous ones. ``progress()`` runs
    after every embedder micro-batch and every detector call (the caller's liveness stamp).
    ``values`` (the bundle's value view, None without one) binds each computed pattern
    (``PatternScore.values``); an event's score is then ``event_score(result, its values)``.
    The table belongs to one model, value view included.
    """
    if not dedup and table is None:
        try:
            return list(_score(list(texts), embedder, detector, context, progress, values))
        except Exception:
            if on_failure is None:
                raise
        out: list[PatternScore | None] = []
        for text in texts:
            try:
                out += _score([text], embedder, detector, context, progress, values)
            except Exception as exc:
                on_failure(text, exc)
                out.append(None)
        return out
    found: dict[str, PatternScore | None] = {}
    missing: list[str] = []
    for text in texts:
        if text in found:
            continue
        entry = table.get(text) if table is not None else None
        found[text] = entry
        if entry is None:
            missing.append(text)
    if table is not None:
        table.misses += len(missing)
        table.hits += len(texts) - len(missing)
    if missing:
        try:
            computed: list[PatternScore | None] = list(
                _score(missing, embedder, detector, context, progress, values)
            )
        except Exception:
            if on_failure is None:
                raise
            computed = []
            for text in missing:
                try:
                    computed += _score([text], embedder, detector, context, progress, values)
                except Exception as exc:
                    on_failure(text, exc)
                    computed.append(None)
        for text, entry in zip(missing, computed, strict=True):
            found[text] = entry
            if entry is not None and table is not None:
                table.put(text, entry)
    return [found[text] for text in texts]


def _score(
    texts: list[str],
    embedder: Embedder,
    detector: Detector,
    context: AlertContext | None,
    progress: Callable[[], None] | None,
    values: ValueView | None,
) -> list[PatternScore]:
    vectors = embedder.embed(texts, progress=progress)
    scores = detector.score(vectors, texts)
    if progress is not None:
        progress()
    rows = zip(scores.score.tolist(), scores.distance.tolist(), scores.cluster.tolist(), strict=True)
    results = [PatternScore(float(s), float(d), int(c)) for s, d, c in rows]
    if values is not None:
        results = [
            PatternScore(r.score, r.distance, r.cluster, values=values.bind(text, r.score))
            for text, r in zip(texts, results, strict=True)
        ]
    if context is None:
        return results
    anomalous = [i for i, r in enumerate(results) if r.score > 1.0 or r.anomalous]
    nearest: dict[int, tuple[tuple[str, float], ...]] = {}
    if anomalous and context.examples is not None and context.neighbours > 0 and len(context.examples):
        found = context.examples.nearest(np.asarray(vectors)[anomalous], k=context.neighbours)
        nearest = {
            i: tuple((n.text, n.similarity) for n in row) for i, row in zip(anomalous, found, strict=True)
        }
    # With a value view any event may alert through its values: every pattern says whether it is known.
    for i in range(len(results)) if values is not None else anomalous:
        known = None if context.known is None else texts[i] in context.known
        r = results[i]
        results[i] = PatternScore(r.score, r.distance, r.cluster, known, nearest.get(i, ()), r.values)
    return results
