"""The value view: what masking replaced still counts, per pattern slot, beside the pattern's score.

Masking (agent.model.textprep) turns ``request served in 12 ms`` and ``request served in 30000 ms``
into one pattern, ``request served in <NUM> ms``, and a benign ``/img/a.png`` and a traversal
``../../etc/passwd`` into ``<PATH>``. The pattern is what the embedder and the detector see, once
per distinct text (the agent's pattern table); the values behind its placeholders are what this
module sees, on every event. It is DeepLog's second model — a model of each log key's parameter
values beside the key — reduced to what stays cheap and explainable: per slot (the n-th
placeholder of a pattern) a compact descriptor of the values seen in training, and an evidence
score of an event's values against it. Drain3 and LogLead extract the same thing (a template's
parameters, by position); they leave it to the user to model.

Slot descriptors (``ValueView.fit``, from the normal training events)
    Each slot is described by *range tests* and *category tests*, chosen by its placeholder:

    ==========  ============================================================  ====================
    slot        range tests (training minimum and maximum of a feature)       category tests
    ==========  ============================================================  ====================
    ``<NUM>``   magnitude ``sign(x) log10(1 + |x|)``                          value
    ``<PATH>``  length (log2), ``/`` segments, ``..``, ``%`` encodings,       value, extension
                other punctuation (quotes, ``;``, ``<``, ``$``, ...)
    ``<URL>``   as paths, plus digits (addresses, ports)                      value, origin
    ``<EMAIL>`` length, punctuation, digits                                   value, domain
    ``<IP>``    length                                                        value, first two
                                                                              groups
    others      length                                                        value
    ==========  ============================================================  ====================

    A category test exists only where training saw at most ``MAX_CATEGORIES`` distinct values
    (low cardinality: status codes, levels, hosts, file types); it keeps those values. A slot
    needs ``MIN_VALUES`` training values to be described. Every placeholder also gets a *pooled*
    slot, described from all its training values whatever the pattern: it scores the slots of
    patterns training saw fewer than ``MIN_VALUES`` times or never (a traversal in a request line
    of a new shape is still a path with ``..`` where no training path had one).

Order check (``_follows_input_order``)
    A test is only kept where the training values could be any order: a date, a clock, an epoch
    time or a counter follows the input's order, and tomorrow's value is one training never saw
    — a category or range test on it would flag every event of the next day (HDFS lines start
    with ``081109 203531`` as two numbers: 760 of the next day's 1,000 normal lines flagged before
    this check, 35 with it). Per test, Bartels' rank von Neumann ratio of the values in input
    order (2 when they are exchangeable, near 0 for a clock) more than ``ORDER_Z`` standard
    deviations below 2 drops the test. The values of a slot are also judged as a *field* across
    patterns — named by the pattern's text before it and its placeholder, so a shared log header's
    date is one field whatever the message — so a pattern that saw a single day keeps no test on
    it either; and a pattern that falls back to the pooled slots drops a field's ordered tests
    there too (the view keeps the ordered fields' hashes). Measured on the eight dev sets: the
    same AUROC to the third decimal (BGL 0.887 → 0.888).

Evidence (nats, the ``-log`` tail probability the detectors' evidence uses)
    A feature inside its training range: 0. Outside, by a distance ``d`` past the nearer end:
    ``log((n + 1) / 2) + log(1 + d / scale)`` — a fresh normal value falls outside the range of
    ``n`` training values with probability ``2 / (n + 1)``, and the further out, the less likely
    (``scale``: the range's width, at least a floor per feature). A value a category test never
    saw: ``log((n + 1) / (n1 + 1))``, Good-Turing's probability of an unseen value (``n1``: values
    seen once). An event's value evidence is its strongest test's, minus the log of the
    pattern's number of tests (a Bonferroni correction: a pattern with twenty slots must not
    alert twenty times as often), floored at 0.

Fusion under one calibration (``ValueView.calibrate``)
    The pattern part stays the detector's: its score ``s`` (raw / threshold, cached per pattern)
    becomes evidence ``e_p(s)``, the tail probability of ``s`` among held-out normal events'
    scores (leave-one-out for those events themselves). An event's combined evidence is
    ``e_p(s) + e_v``, and its score ``max(s, (e_p(s) + e_v) / T)``: a pattern anomalous on its own
    keeps the detector's verdict and scale (a tail probability flattens everything beyond the
    held-out maximum to about ``log m``, so ``e_p / T`` alone would put a pattern at 2.5 times its
    threshold right at 1.0), and a value can only add. ``T`` spends what is left of the false-
    positive budget: the detector alone flags a share ``p`` of held-out normal *events* (events
    the detector did not fit and whose values the slots did not see); ``T`` is the quantile of the
    combined evidence over the events the detector passes at ``(target - p) / (1 - p)`` (at least
    one event in ``n + 1`` of them: when the detector has spent the budget, a value must be beyond
    every held-out one). So ``score > 1.0`` keeps its meaning: beyond the target false-positive
    rate. An event without value evidence scores ``max(s, e_p(s) / T)``, monotone in ``s``.

Run time (``bind`` once per pattern, ``BoundPattern.decide`` per event)
    ``ValueView.bind(pattern, pattern_score)`` finds the pattern's slots (a stable 64-bit hash of
    the prepared text) and precomputes ``e_p(s)``; the pattern table keeps the result beside the
    pattern's score (``agent.model.patterns.PatternScore.values``, bound on the table's miss).
    ``BoundPattern.decide(values)`` — what ``agent.model.patterns.event_score`` calls per event —
    gives ``score(values)`` and, for an anomalous event with value evidence,
    ``explain(values)``: which slot and value were unusual and what normal looks like
    (``{"slot", "placeholder", "value", "expected"}``). Pure Python over the pattern's slots
    (``SlotValues.values`` from ``TextPreparation.prepare_values``); its cost per event is
    measured by bench/values.py (docs/detectors.md, "The value view"), not asserted.

Storage: ``arrays()`` / ``meta()`` (npy + JSON, no pickle), bounded by ``max_slots`` slots over
the most frequent patterns (at most ``MAX_SLOTS_PER_PATTERN`` each) and ``MAX_CATEGORIES`` kept
values per category test, plus one hash and bitmask per ordered header field; pattern keys are
``agent.model.examples.pattern_hash`` (the hash ``known_patterns.npy`` already stores), kept values
are raw text (at most ``MAX_CATEGORY_CHARS`` characters: what an alert shows as normal).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from agent.model.detectors._common import CalibratedDetector, Texts
from agent.model.detectors.base import FloatArray
from agent.model.detectors.calibration import (
    check_target_fpr,
    held_out_evidence,
    holdout_split,
    quantile_threshold,
    tail_evidence,
)
from agent.model.detectors.fused import FusedDetector
from agent.model.examples import pattern_hash
from agent.model.textprep import MASKS, SlotValues

Float64Array = npt.NDArray[np.float64]

FORMAT_VERSION = 1
META_FILE = "values.json"
#: training values a slot needs before it is described.
MIN_VALUES = 5
#: a category test keeps at most this many distinct values (more: the slot is not categorical).
MAX_CATEGORIES = 16
#: longer values disable a slot's category test (an alert shows kept values verbatim).
MAX_CATEGORY_CHARS = 256
#: slots of one pattern beyond this many placeholders are not described.
MAX_SLOTS_PER_PATTERN = 32
#: slots kept over all patterns (most frequent patterns first): about 200 bytes each in the bundle.
DEFAULT_MAX_SLOTS = 20_000
#: held-out pattern scores kept for ``e_p`` (evenly spaced order statistics beyond this).
MAX_NULL = 4096
#: the arrays ``arrays()`` returns, saved as ``values.<name>.npy``.
ARRAYS = (
    "keys",
    "slot_start",
    "n_values",
    "slot_index",
    "slot_placeholder",
    "slot_count",
    "ranges",
    "category_start",
    "category_values",
    "category_unseen",
    "pooled",
    "null",
    "ordered_fields",
    "ordered_tests",
)
#: characters an alert's ``value`` carries at most.
MAX_SHOWN_CHARS = 512
#: the order check: a test whose training values follow the input's order (a date, a clock, a
#: counter) by more than ``ORDER_Z`` standard deviations (one-sided p = 0.001) is not kept; slots
#: with fewer than ``ORDER_MIN_VALUES`` values are not checked.
ORDER_Z = 3.09
ORDER_MIN_VALUES = 20

FEATURES = ("magnitude", "length", "segments", "dotdot", "encoded", "punctuation", "digits")
#: the smallest range width a distance past the range is measured in, per feature.
_SCALE_FLOOR = (0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0)
CATEGORY_TESTS = ("value", "part")

_PLACEHOLDER = re.compile("|".join(sorted({re.escape(m.placeholder) for m in MASKS})))
_PUNCTUATION = re.compile(r"[^\w./:@%+=,~&?#-]")
_DIGIT = re.compile(r"\d")
_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,8})$")


def _magnitude(value: str) -> tuple[float, ...]:
    if len(value) > 300:  # float() would overflow to inf: the digit count is the decades
        return (float(len(value)),)
    try:
        x = float(value)
    except ValueError:  # "1.2.3": no magnitude; its category test still sees it
        return (math.nan,)
    return (math.copysign(math.log10(1.0 + abs(x)), x),)


def _length(value: str) -> tuple[float, ...]:
    return (math.log2(1.0 + len(value)),)


def _path_shape(value: str) -> tuple[float, ...]:
    return (
        math.log2(1.0 + len(value)),
        float(value.count("/")),
        float(value.count("..")),
        float(value.count("%")),
        float(len(_PUNCTUATION.findall(value))),
    )


def _url_shape(value: str) -> tuple[float, ...]:
    return (*_path_shape(value), float(len(_DIGIT.findall(value))))


def _email_shape(value: str) -> tuple[float, ...]:
    return (
        math.log2(1.0 + len(value)),
        float(len(_PUNCTUATION.findall(value))),
        float(len(_DIGIT.findall(value))),
    )


def _origin(value: str) -> str:
    scheme, _, rest = value.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


def _extension(value: str) -> str:
    found = _EXTENSION.search(value.rsplit("/", 1)[-1])
    return "" if found is None else found.group(1).lower()


def _domain(value: str) -> str:
    return value.rpartition("@")[2].lower()


def _ip_prefix(value: str) -> str:
    separator = "." if "." in value and value.count(":") <= 1 else ":"
    return separator.join(value.split(separator, 2)[:2]).lower()


class _Kind(NamedTuple):
    features: tuple[int, ...]  # indices into FEATURES, in the order ``shape`` returns them
    shape: Callable[[str], tuple[float, ...]]
    part: Callable[[str], str] | None
    part_name: str


_F = {name: i for i, name in enumerate(FEATURES)}
_SHAPE_FEATURES = tuple(_F[f] for f in ("length", "segments", "dotdot", "encoded", "punctuation"))
KINDS: dict[str, _Kind] = {
    "<NUM>": _Kind((_F["magnitude"],), _magnitude, None, ""),
    "<PATH>": _Kind(_SHAPE_FEATURES, _path_shape, _extension, "extension"),
    "<URL>": _Kind((*_SHAPE_FEATURES, _F["digits"]), _url_shape, _origin, "origin"),
    "<EMAIL>": _Kind((_F["length"], _F["punctuation"], _F["digits"]), _email_shape, _domain, "domain"),
    "<IP>": _Kind((_F["length"],), _length, _ip_prefix, "prefix"),
}
_OTHER = _Kind((_F["length"],), _length, None, "")


def kind_of(placeholder: str) -> _Kind:
    """The tests of a slot with this placeholder (``_OTHER``: length and value only)."""
    return KINDS.get(placeholder, _OTHER)


def _exceed_base(n: int) -> float:
    return math.log((n + 1) / 2.0)


def _unseen(counts: Counter[str]) -> float:
    n = sum(counts.values())
    singles = sum(1 for c in counts.values() if c == 1)
    return math.log((n + 1) / (singles + 1))


class _Slot(NamedTuple):
    """One described slot, in the form the per-event loop reads fastest."""

    position: int  # the placeholder's position among the pattern's values
    placeholder: str
    seen: int  # training values
    shape: Callable[[str], tuple[float, ...]]
    #: (position in ``shape``'s tuple, feature index, lo, hi, scale, evidence at the range's edge)
    ranges: tuple[tuple[int, int, float, float, float, float], ...]
    values: frozenset[str] | None
    value_unseen: float
    part: Callable[[str], str] | None
    parts: frozenset[str] | None
    part_unseen: float


@dataclass(frozen=True)
class ValueFinding:
    """The unusual value of an alert: which slot, its value, and what normal looks like."""

    slot: int
    placeholder: str
    value: str
    evidence: float
    expected: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The alert's ``value`` object (additive to the alert schema)."""
        return {
            "slot": self.slot,
            "placeholder": self.placeholder,
            "value": self.value[:MAX_SHOWN_CHARS],
            "expected": self.expected,
        }


class BoundPattern:
    """A pattern's slots with its pattern evidence precomputed: what the pattern table keeps.

    ``score(values)`` is the event's calibrated score, ``max(s, (e_p + e_v) / T)``; with no
    described slot it is the constant ``max(s, e_p / T)`` (``base_score``). Values whose count
    differs from the pattern's (a raw text that spelled a placeholder literally, or values that
    could not be read) add nothing. ``decide(values)`` is the per-event call: the score and, for
    an anomalous event with value evidence, ``explain(values)``.
    """

    __slots__ = (
        "_base",
        "_checks",
        "_correction",
        "_inv_threshold",
        "_n_values",
        "_quiet",
        "_slots",
        "pattern_score",
    )

    def __init__(
        self,
        pattern_score: float,
        base: float,
        slots: tuple[_Slot, ...],
        n_values: int,
        *,
        threshold: float,
    ) -> None:
        self.pattern_score = pattern_score
        self._base = base
        self._slots = slots
        # A slot whose every test the order check dropped has nothing to check per event.
        self._checks = tuple(
            (slot.position, _checker(slot))
            for slot in slots
            if slot.ranges or slot.values is not None or slot.parts is not None
        )
        self._n_values = n_values
        tests = sum(len(s.ranges) + (s.values is not None) + (s.parts is not None) for s in slots)
        self._correction = math.log(tests) if tests > 1 else 0.0
        self._inv_threshold = 1.0 / threshold
        # What ``decide`` returns for an event without value evidence: ``score`` with e_v = 0.
        self._quiet: tuple[float, ValueFinding | None] = (
            max(pattern_score, base * self._inv_threshold),
            None,
        )

    @property
    def slots(self) -> int:
        """How many of the pattern's slots are described."""
        return len(self._slots)

    @property
    def base_score(self) -> float:
        """The score of an event of this pattern without value evidence, ``max(s, e_p / T)``."""
        return self._quiet[0]

    def evidence(self, values: Sequence[str] | None) -> float:
        """The event's value evidence ``e_v`` (nats, >= 0)."""
        if not self._slots or values is None or len(values) != self._n_values:
            return 0.0
        best = 0.0
        for position, check in self._checks:
            e = check(values[position])
            if e > best:
                best = e
        return best - self._correction if best > self._correction else 0.0

    def score(self, values: Sequence[str] | None) -> float:
        """The event's score: ``max(s, (e_p + e_v) / T)`` (> 1.0: beyond the target false-positive
        rate)."""
        return max(self.pattern_score, (self._base + self.evidence(values)) * self._inv_threshold)

    def decide(self, values: Sequence[str] | None) -> tuple[float, ValueFinding | None]:
        """``(score(values), finding)``: the finding is ``explain(values)`` when the event is
        anomalous (score > 1.0) and its values added evidence, else None.

        The per-event call of the agent, ``score`` and ``evaluate``
        (``agent.model.patterns.event_score``). The score is ``score(values)``'s to the bit; an
        event without value evidence gets a precomputed pair (a pattern without described slots
        costs one check), and only an anomalous one pays for the explanation.
        """
        if not self._checks or values is None or len(values) != self._n_values:
            return self._quiet
        best = 0.0
        for position, check in self._checks:
            e = check(values[position])
            if e > best:
                best = e
        if best <= self._correction:
            return self._quiet
        combined = (self._base + (best - self._correction)) * self._inv_threshold
        score = max(self.pattern_score, combined)
        return score, (self.explain(values) if combined > 1.0 else None)

    def explain(self, values: Sequence[str] | None) -> ValueFinding | None:
        """The slot whose value is least like training's, when any test fires; else None."""
        if not self._slots or values is None or len(values) != self._n_values:
            return None
        found: ValueFinding | None = None
        for slot in self._slots:
            finding = _slot_finding(slot, values[slot.position])
            if finding is not None and (found is None or finding.evidence > found.evidence):
                found = finding
        return found


def _slot_evidence(slot: _Slot, value: str) -> float:
    best = 0.0
    shape = slot.shape(value)
    for position, _, lo, hi, scale, edge in slot.ranges:
        x = shape[position]
        if x > hi:
            e = edge + math.log1p((x - hi) / scale)
        elif x < lo:
            e = edge + math.log1p((lo - x) / scale)
        else:
            continue
        if e > best:
            best = e
    if slot.values is not None and slot.value_unseen > best and value not in slot.values:
        best = slot.value_unseen
    if (
        slot.parts is not None
        and slot.part is not None
        and slot.part_unseen > best
        and slot.part(value) not in slot.parts
    ):
        best = slot.part_unseen
    return best


def _checker(slot: _Slot) -> Callable[[str], float]:
    """``_slot_evidence`` of ``slot`` with a fast path for the common slots (numbers, and the
    length-only ones: addresses, timestamps, ids): a value a category test saw is in every range
    (the ranges were taken over the same values), and a number or a length strictly inside its
    range, compared without the logarithm, needs only the category tests. Anything else takes
    the exact computation, so the result is ``_slot_evidence``'s on every value."""

    def exact(value: str) -> float:
        return _slot_evidence(slot, value)

    if len(slot.ranges) != 1 or FEATURES[slot.ranges[0][1]] not in ("magnitude", "length"):
        return exact
    _, feature, lo, hi, _, _ = slot.ranges[0]
    seen, unseen = slot.values, slot.value_unseen
    part, parts, part_unseen = slot.part, slot.parts, slot.part_unseen
    if FEATURES[feature] == "length":
        # lengths are integers: the training range in characters, exactly
        low, high = round(2.0**lo - 1.0), round(2.0**hi - 1.0)

        def measure(value: str) -> float:
            return float(len(value))

    else:
        # inside by more than float rounding of the magnitude's inverse
        low_x, high_x = (math.copysign(10.0 ** abs(y) - 1.0, y) for y in (lo, hi))
        low, high = low_x + 1e-9 * (1.0 + abs(low_x)), high_x - 1e-9 * (1.0 + abs(high_x))

        def measure(value: str) -> float:
            try:
                return float(value) if len(value) <= 300 else math.nan
            except ValueError:
                return math.nan

    def check(value: str) -> float:
        if seen is not None and value in seen:
            return 0.0
        if not low <= measure(value) <= high:
            return exact(value)
        e = unseen if seen is not None else 0.0
        if parts is not None and part is not None and part_unseen > e and part(value) not in parts:
            e = part_unseen
        return e

    return check


def _shown(feature: int, x: float) -> float:
    """A feature value in the units a person reads (numbers, characters, counts)."""
    if FEATURES[feature] == "magnitude":
        return round(math.copysign(10.0 ** abs(x) - 1.0, x), 6)
    if FEATURES[feature] == "length":
        return float(round(2.0**x - 1.0))
    return x


def _slot_finding(slot: _Slot, value: str) -> ValueFinding | None:
    best: tuple[float, dict[str, Any]] | None = None
    shape = slot.shape(value)
    for position, feature, lo, hi, scale, edge in slot.ranges:
        x = shape[position]
        if lo <= x <= hi or math.isnan(x):
            continue
        e = edge + math.log1p(max(x - hi, lo - x) / scale)
        if best is None or e > best[0]:
            expected = {
                "feature": FEATURES[feature],
                "observed": _shown(feature, x),
                "range": [_shown(feature, lo), _shown(feature, hi)],
                "seen": slot.seen,
            }
            best = (e, expected)
    if slot.values is not None and value not in slot.values and (best is None or slot.value_unseen > best[0]):
        best = (slot.value_unseen, {"values": sorted(slot.values), "seen": slot.seen})
    if slot.parts is not None and slot.part is not None:
        part = slot.part(value)
        if part not in slot.parts and (best is None or slot.part_unseen > best[0]):
            name = kind_of(slot.placeholder).part_name
            best = (slot.part_unseen, {name: part, "values": sorted(slot.parts), "seen": slot.seen})
    if best is None:
        return None
    return ValueFinding(slot.position, slot.placeholder, value, best[0], best[1])


class ValueView:
    """Slot descriptors of the most frequent training patterns and the combined calibration.

    ``fit`` describes the slots, ``calibrate`` sets the combined threshold on held-out normal
    events, ``bind`` serves the agent. ``fit_value_view`` does all three beside a fitted detector.
    """

    def __init__(
        self,
        *,
        keys: npt.NDArray[np.uint64],
        slot_start: npt.NDArray[np.int64],
        n_values: npt.NDArray[np.int64],
        slot_index: npt.NDArray[np.int64],
        slot_placeholder: npt.NDArray[np.str_],
        slot_count: npt.NDArray[np.int64],
        ranges: Float64Array,
        category_start: npt.NDArray[np.int64],
        category_values: npt.NDArray[np.str_],
        category_unseen: Float64Array,
        pooled: npt.NDArray[np.int64],
        null: Float64Array | None = None,
        threshold: float | None = None,
        target_fpr: float | None = None,
        order_dropped: int | None = None,
        ordered_fields: npt.NDArray[np.uint64] | None = None,
        ordered_tests: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self._keys = keys
        self._slot_start = slot_start
        self._n_values = n_values
        self._slot_index = slot_index
        self._slot_placeholder = slot_placeholder
        self._slot_count = slot_count
        self._ranges = ranges
        self._category_start = category_start
        self._category_values = category_values
        self._category_unseen = category_unseen
        self._pooled = pooled
        self._pooled_slots = {str(slot_placeholder[i]): self._slot(int(i)) for i in pooled.tolist()}
        self._null = null
        self.threshold = threshold
        self.target_fpr = target_fpr
        self._position = {int(k): i for i, k in enumerate(keys.tolist())}
        #: tests the order check did not keep (None: not recorded, a view saved before it).
        self.order_dropped = order_dropped
        self._ordered_fields = np.zeros(0, np.uint64) if ordered_fields is None else ordered_fields
        self._ordered_tests = np.zeros(0, np.int64) if ordered_tests is None else ordered_tests
        if len(self._ordered_fields) != len(self._ordered_tests):
            raise ValueError("value view: ordered_fields and ordered_tests differ in length")
        #: header fields whose tests follow the input's order: field hash -> bitmask of those tests
        self._ordered = {
            int(h): int(m)
            for h, m in zip(self._ordered_fields.tolist(), self._ordered_tests.tolist(), strict=True)
        }

    @property
    def n_patterns(self) -> int:
        return len(self._keys)

    @property
    def n_slots(self) -> int:
        """Described slots, the pooled ones (one per placeholder) included."""
        return len(self._slot_index)

    @property
    def is_calibrated(self) -> bool:
        return self.threshold is not None and self._null is not None

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        patterns: Sequence[str],
        values: Sequence[SlotValues],
        *,
        max_slots: int = DEFAULT_MAX_SLOTS,
        keep_values: bool = True,
    ) -> ValueView:
        """Describe the slots of the normal training events' patterns (see the module docstring).

        ``keep_values=False`` makes no category test: the view then keeps no training value as
        text, only ranges of numeric features (``train --no-examples``: no training text).

        ``patterns[i]`` is event i's prepared text, ``values[i]`` what its placeholders replaced
        (``TextPreparation.prepare_values``). Events whose values could not be read, or whose
        value count differs from their pattern's most common one, are left out. Patterns are
        taken most frequent first while the slots fit in ``max_slots``.
        """
        if len(patterns) != len(values):
            raise ValueError(f"one SlotValues per pattern is needed: {len(patterns)} != {len(values)}")
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        grouped: dict[str, list[SlotValues]] = {}
        for pattern, slot_values in zip(patterns, values, strict=True):
            if slot_values.values:
                grouped.setdefault(pattern, []).append(slot_values)
        header = _header_fields(patterns, values)
        described: list[tuple[int, list[dict[str, Any]]]] = []
        used = 0
        for pattern, events in sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            placeholders = Counter(e.placeholders for e in events).most_common(1)[0][0]
            kept = [e.values for e in events if e.placeholders == placeholders and e.values is not None]
            if len(kept) < MIN_VALUES:
                continue
            spans = [m.start() for m in _PLACEHOLDER.finditer(pattern)]
            fields = (
                [(pattern[:at], ph) for at, ph in zip(spans, placeholders, strict=True)]
                if len(spans) == len(placeholders)
                else []
            )
            described_slots = [
                _describe(
                    i,
                    placeholders[i],
                    [v[i] for v in kept],
                    ordered=header.get(fields[i], ()) if fields else (),
                    categories=keep_values,
                )
                for i in range(min(len(placeholders), MAX_SLOTS_PER_PATTERN))
            ]
            slots = [s for s in described_slots if s is not None]
            if not slots:
                continue
            if used + len(slots) > max_slots:
                break
            used += len(slots)
            described.append((pattern_hash(pattern), [{"n_values": len(placeholders)}, *slots]))
        by_placeholder: dict[str, list[str]] = {}
        for slot_values in values:
            for placeholder, value in zip(slot_values.placeholders, slot_values.values or (), strict=False):
                by_placeholder.setdefault(placeholder, []).append(value)
        # Pooled values mix fields, several of one event side by side: no order check of their own;
        # a header field that follows the order loses those tests when a pattern falls back to
        # the pooled slot (``_lookup``).
        pooled = [
            _describe(-1, placeholder, found, check_order=False, categories=keep_values)
            for placeholder, found in sorted(by_placeholder.items())
        ]
        view = cls._from_described(described, [p for p in pooled if p is not None])
        ordered = sorted((_field_hash(*name), _test_mask(tests)) for name, tests in header.items() if tests)
        view._ordered_fields = np.asarray([h for h, _ in ordered], dtype=np.uint64)
        view._ordered_tests = np.asarray([m for _, m in ordered], dtype=np.int64)
        view._ordered = dict(ordered)
        view.order_dropped = sum(slot["dropped"] for _, (_, *slots) in described for slot in slots) + sum(
            p["dropped"] for p in pooled if p is not None
        )
        return view

    @classmethod
    def _from_described(
        cls, described: list[tuple[int, list[dict[str, Any]]]], pooled: list[dict[str, Any]]
    ) -> ValueView:
        described.sort(key=lambda item: item[0])
        slot_start = [0]
        n_values: list[int] = []
        slots: list[dict[str, Any]] = []
        for _, (head, *pattern_slots) in described:
            n_values.append(head["n_values"])
            slots += pattern_slots
            slot_start.append(len(slots))
        pooled_slots = list(range(len(slots), len(slots) + len(pooled)))
        slots += pooled
        ranges = np.full((len(slots), len(FEATURES), 2), np.nan, dtype=np.float64)
        category_unseen = np.full((len(slots), len(CATEGORY_TESTS)), np.nan, dtype=np.float64)
        category_start = [0]
        category_values: list[str] = []
        for s, slot in enumerate(slots):
            for feature, (lo, hi) in slot["ranges"].items():
                ranges[s, feature] = (lo, hi)
            for t, test in enumerate(CATEGORY_TESTS):
                kept = slot["categories"].get(test)
                if kept is not None:
                    category_unseen[s, t] = kept[1]
                    category_values += sorted(kept[0])
                category_start.append(len(category_values))
        return cls(
            keys=np.asarray([key for key, _ in described], dtype=np.uint64),
            slot_start=np.asarray(slot_start, dtype=np.int64),
            n_values=np.asarray(n_values, dtype=np.int64),
            slot_index=np.asarray([s["index"] for s in slots], dtype=np.int64),
            slot_placeholder=np.asarray([s["placeholder"] for s in slots], dtype=np.str_),
            slot_count=np.asarray([s["count"] for s in slots], dtype=np.int64),
            ranges=ranges,
            category_start=np.asarray(category_start, dtype=np.int64),
            category_values=np.asarray(category_values, dtype=np.str_),
            category_unseen=category_unseen,
            pooled=np.asarray(pooled_slots, dtype=np.int64),
        )

    # -- calibration --------------------------------------------------------------------------

    def calibrate(
        self,
        pattern_scores: npt.ArrayLike,
        patterns: Sequence[str],
        values: Sequence[SlotValues],
        target_fpr: float,
    ) -> None:
        """Set the combined threshold on held-out normal events (see the module docstring).

        ``pattern_scores[i]``: the detector's score of held-out event i, from a detector that did
        not fit it; ``patterns``/``values``: its prepared text and values, which ``fit`` did not see.
        """
        scores = np.asarray(pattern_scores, dtype=np.float64).reshape(-1)
        if not len(scores) == len(patterns) == len(values):
            raise ValueError("calibrate: one pattern score, pattern and SlotValues per held-out event")
        if len(scores) < 2:
            raise ValueError(f"calibrate: need at least 2 held-out events, got {len(scores)}")
        self.target_fpr = check_target_fpr(target_fpr)
        order = np.argsort(scores, kind="stable")
        pattern_evidence = np.empty(len(scores), dtype=np.float64)
        pattern_evidence[order] = held_out_evidence(scores[order])
        null = scores[order]
        if len(null) > MAX_NULL:
            null = null[np.round(np.linspace(0, len(null) - 1, MAX_NULL)).astype(np.int64)]
        self._null = null
        bound: dict[str, BoundPattern] = {}
        value_evidence = np.empty(len(scores), dtype=np.float64)
        for i, (pattern, slot_values) in enumerate(zip(patterns, values, strict=True)):
            if pattern not in bound:
                bound[pattern] = BoundPattern(0.0, 0.0, *self._lookup(pattern), threshold=1.0)
            value_evidence[i] = bound[pattern].evidence(slot_values.values)
        # The budget the detector leaves: it flags a share of these events on its own.
        passed = scores <= 1.0
        flagged = 1.0 - float(np.mean(passed))
        rest = max((self.target_fpr - flagged) / (1.0 - flagged) if flagged < 1.0 else 0.0, 0.0)
        combined = (pattern_evidence + value_evidence)[passed] if passed.any() else pattern_evidence
        self.threshold = quantile_threshold(combined, max(rest, 1.0 / (len(combined) + 1)))

    # -- run time -----------------------------------------------------------------------------

    def pattern_evidence(self, pattern_score: float) -> float:
        """``e_p``: the tail evidence of a pattern score among the held-out events' scores."""
        if self._null is None:
            raise RuntimeError("the value view is not calibrated: call calibrate() or load one")
        return float(tail_evidence(self._null, np.array([pattern_score], dtype=np.float64))[0])

    def bind(self, pattern: str, pattern_score: float) -> BoundPattern:
        """The pattern's slots and pattern evidence, for scoring its events (once per pattern)."""
        if self.threshold is None:
            raise RuntimeError("the value view is not calibrated: call calibrate() or load one")
        evidence = self.pattern_evidence(pattern_score)
        return BoundPattern(pattern_score, evidence, *self._lookup(pattern), threshold=self.threshold)

    def _lookup(self, pattern: str) -> tuple[tuple[_Slot, ...], int]:
        """The pattern's slots and its number of values: its own descriptors where training
        described the pattern, else the pooled descriptor of each of its placeholders."""
        position = self._position.get(pattern_hash(pattern))
        if position is not None:
            start, end = int(self._slot_start[position]), int(self._slot_start[position + 1])
            return tuple(self._slot(s) for s in range(start, end)), int(self._n_values[position])
        found = list(_PLACEHOLDER.finditer(pattern))
        pooled = []
        for i, match in enumerate(found[:MAX_SLOTS_PER_PATTERN]):
            slot = self._pooled_slots.get(match.group(0))
            if slot is None:
                continue
            mask = self._ordered.get(_field_hash(pattern[: match.start()], match.group(0)), 0)
            pooled.append(_without(slot, mask)._replace(position=i))
        return tuple(pooled), len(found)

    def _slot(self, s: int) -> _Slot:
        placeholder = str(self._slot_placeholder[s])
        kind = kind_of(placeholder)
        count = int(self._slot_count[s])
        ranges = []
        for position, feature in enumerate(kind.features):
            lo, hi = (float(v) for v in self._ranges[s, feature])
            if math.isnan(lo):
                continue
            scale = max(hi - lo, _SCALE_FLOOR[feature])
            ranges.append((position, feature, lo, hi, scale, _exceed_base(count)))
        kept: list[frozenset[str] | None] = []
        for t in range(len(CATEGORY_TESTS)):
            c = s * len(CATEGORY_TESTS) + t
            if math.isnan(self._category_unseen[s, t]):
                kept.append(None)
            else:
                start, end = int(self._category_start[c]), int(self._category_start[c + 1])
                kept.append(frozenset(str(v) for v in self._category_values[start:end]))
        return _Slot(
            position=int(self._slot_index[s]),
            placeholder=placeholder,
            seen=count,
            shape=kind.shape,
            ranges=tuple(ranges),
            values=kept[0],
            value_unseen=float(np.nan_to_num(self._category_unseen[s, 0])),
            part=kind.part,
            parts=kept[1],
            part_unseen=float(np.nan_to_num(self._category_unseen[s, 1])),
        )

    # -- persistence --------------------------------------------------------------------------

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Everything but the scalars, as arrays for ``np.save(allow_pickle=False)``."""
        if self._null is None:
            raise RuntimeError("the value view is not calibrated: call calibrate() before saving")
        return {
            "keys": self._keys,
            "slot_start": self._slot_start,
            "n_values": self._n_values,
            "slot_index": self._slot_index,
            "slot_placeholder": self._slot_placeholder,
            "slot_count": self._slot_count,
            "ranges": self._ranges,
            "category_start": self._category_start,
            "category_values": self._category_values,
            "category_unseen": self._category_unseen,
            "pooled": self._pooled,
            "null": self._null,
            "ordered_fields": self._ordered_fields,
            "ordered_tests": self._ordered_tests,
        }

    def meta(self) -> dict[str, Any]:
        """The scalars and the table layout, for JSON."""
        return {
            "format": FORMAT_VERSION,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "features": list(FEATURES),
            "category_tests": list(CATEGORY_TESTS),
            "patterns": self.n_patterns,
            "slots": self.n_slots,
            "order_dropped": self.order_dropped,
        }

    @classmethod
    def restore(cls, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]) -> ValueView:
        """Inverse of ``arrays`` + ``meta``; ValueError on a format or layout it does not know."""
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"value view format {meta.get('format')!r}; this version reads {FORMAT_VERSION}")
        if list(meta.get("features", [])) != list(FEATURES) or list(meta.get("category_tests", [])) != list(
            CATEGORY_TESTS
        ):
            raise ValueError("value view: saved with other features or category tests; retrain the model")
        if meta.get("threshold") is None or not float(meta["threshold"]) > 0:
            raise ValueError("value view: the saved threshold must be positive")
        return cls(
            keys=np.asarray(arrays["keys"], dtype=np.uint64),
            slot_start=np.asarray(arrays["slot_start"], dtype=np.int64),
            n_values=np.asarray(arrays["n_values"], dtype=np.int64),
            slot_index=np.asarray(arrays["slot_index"], dtype=np.int64),
            slot_placeholder=np.asarray(arrays["slot_placeholder"], dtype=np.str_),
            slot_count=np.asarray(arrays["slot_count"], dtype=np.int64),
            ranges=np.asarray(arrays["ranges"], dtype=np.float64),
            category_start=np.asarray(arrays["category_start"], dtype=np.int64),
            category_values=np.asarray(arrays["category_values"], dtype=np.str_),
            category_unseen=np.asarray(arrays["category_unseen"], dtype=np.float64),
            pooled=np.asarray(arrays["pooled"], dtype=np.int64),
            null=np.asarray(arrays["null"], dtype=np.float64),
            threshold=float(meta["threshold"]),
            target_fpr=check_target_fpr(float(meta["target_fpr"])),
            order_dropped=meta.get("order_dropped"),
            ordered_fields=np.asarray(arrays.get("ordered_fields", ()), dtype=np.uint64),
            ordered_tests=np.asarray(arrays.get("ordered_tests", ()), dtype=np.int64),
        )

    def save(self, directory: Path) -> list[Path]:
        """Write ``values.json`` and ``values.<name>.npy`` into ``directory``; the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name, array in self.arrays().items():
            path = directory / f"values.{name}.npy"
            np.save(path, array, allow_pickle=False)
            written.append(path)
        meta_path = directory / META_FILE
        meta_path.write_text(json.dumps(self.meta(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return [*written, meta_path]

    @classmethod
    def load(cls, directory: Path) -> ValueView:
        """Read what ``save`` wrote (the caller has verified the files' sha256)."""
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        arrays = {
            n: np.load(directory / f"values.{n}.npy", allow_pickle=False)
            for n in ARRAYS
            if (directory / f"values.{n}.npy").exists()
        }
        return cls.restore(arrays, meta)


def _follows_input_order(codes: npt.NDArray[Any]) -> bool:
    """Whether values (in input order, as any codes whose order means something or nothing) follow
    the input's order: runs of like values, trends, clocks. Bartels' rank version of the von
    Neumann ratio — the mean squared difference of successive ranks over their variance, 2 for
    exchangeable values, near 0 for a date, a clock or a counter — below its mean by more than
    ``ORDER_Z`` standard deviations. Dense ranks (ties share one), so categories and numbers alike.
    Too few values (< ``ORDER_MIN_VALUES``) or one value only: False."""
    n = len(codes)
    if n < ORDER_MIN_VALUES:
        return False
    ranks = np.unique(codes, return_inverse=True)[1].astype(np.float64)
    spread = float(np.sum((ranks - ranks.mean()) ** 2))
    if spread == 0.0:
        return False
    ratio = float(np.sum(np.diff(ranks) ** 2)) / spread
    variance = 4.0 * (n - 2) * (5 * n * n - 2 * n - 9) / (5.0 * n * (n + 1) * (n - 1) ** 2)
    return (ratio - 2.0) / math.sqrt(variance) < -ORDER_Z


def _ordered_tests(placeholder: str, values: Sequence[str]) -> set[int | str]:
    """The tests of a slot with these values (in input order) whose values follow the input's
    order (``_follows_input_order``): range tests by feature index, category tests by name."""
    kind = kind_of(placeholder)
    shapes = np.array([kind.shape(v) for v in values], dtype=np.float64).reshape(len(values), -1)
    ordered: set[int | str] = set()
    for position, feature in enumerate(kind.features):
        column = shapes[:, position]
        if _follows_input_order(column[np.isfinite(column)]):
            ordered.add(feature)
    for test, parts in (("value", values), ("part", [kind.part(v) for v in values] if kind.part else None)):
        if parts is not None and _follows_input_order(np.asarray(parts, dtype=np.str_)):
            ordered.add(test)
    return ordered


def _header_fields(
    patterns: Sequence[str], values: Sequence[SlotValues]
) -> dict[tuple[str, str], set[int | str]]:
    """Tests of shared fields that follow the input's order. A field is named by the text before
    it in its pattern and its placeholder, so a field of a shared log header (``<NUM> <NUM> <NUM>
    INFO ...``: date, time, thread) is one field across every pattern that has it, judged on all
    its values in input order: a date follows the order there even where one pattern saw a single
    day — and that pattern's category test would flag every event of the next day."""
    by_field: dict[tuple[str, str], list[str]] = {}
    names: dict[str, list[tuple[str, str]] | None] = {}
    for pattern, slot_values in zip(patterns, values, strict=True):
        if not slot_values.values:
            continue
        if pattern not in names:
            spans = [m.start() for m in _PLACEHOLDER.finditer(pattern)]
            names[pattern] = (
                [(pattern[:at], ph) for at, ph in zip(spans, slot_values.placeholders, strict=True)]
                if len(spans) == len(slot_values.placeholders)
                else None
            )
        fields = names[pattern]
        if fields is None or len(fields) != len(slot_values.values):
            continue
        for name, value in zip(fields, slot_values.values, strict=True):
            by_field.setdefault(name, []).append(value)
    return {name: _ordered_tests(name[1], found) for name, found in by_field.items()}


def _field_hash(prefix: str, placeholder: str) -> int:
    """The stored name of a field: the text before it in its pattern and its placeholder."""
    return pattern_hash(f"{prefix}\x00{placeholder}")


def _test_mask(tests: Collection[int | str]) -> int:
    """Tests as a bitmask: bit f for the range test of feature f, then one bit per category test."""
    bits: dict[int | str, int] = {i: i for i in range(len(FEATURES))}
    bits.update({t: len(FEATURES) + j for j, t in enumerate(CATEGORY_TESTS)})
    return sum(1 << bits[t] for t in set(tests))


def _without(slot: _Slot, mask: int) -> _Slot:
    """``slot`` without the tests of ``mask`` (``_test_mask``)."""
    if not mask:
        return slot
    values_bit, part_bit = (1 << (len(FEATURES) + j) for j in range(len(CATEGORY_TESTS)))
    return slot._replace(
        ranges=tuple(r for r in slot.ranges if not mask >> r[1] & 1),
        values=None if mask & values_bit else slot.values,
        parts=None if mask & part_bit else slot.parts,
    )


def _describe(
    index: int,
    placeholder: str,
    values: Sequence[str],
    *,
    ordered: Collection[int | str] = (),
    check_order: bool = True,
    categories: bool = True,
) -> dict[str, Any] | None:
    """One slot's descriptor from its training values, in input order (None: fewer than
    MIN_VALUES). A test whose values follow the input's order (``_follows_input_order``: a date, a
    clock, a counter) is not kept, nor the tests ``ordered`` names (its field's, across patterns:
    ``_header_fields``); ``dropped`` counts them. ``categories=False``: no category test."""
    if len(values) < MIN_VALUES:
        return None
    kind = kind_of(placeholder)
    shapes = np.array([kind.shape(v) for v in values], dtype=np.float64)
    ranges: dict[int, tuple[float, float]] = {}
    dropped = 0
    for position, feature in enumerate(kind.features):
        column = shapes[:, position]
        column = column[np.isfinite(column)]
        if len(column) < MIN_VALUES:
            continue
        if feature in ordered or (check_order and _follows_input_order(column)):
            dropped += 1
            continue
        ranges[feature] = (float(column.min()), float(column.max()))
    kept: dict[str, tuple[frozenset[str], float]] = {}
    for test, parts in (("value", values), ("part", [kind.part(v) for v in values] if kind.part else None)):
        if parts is None or not categories:
            continue
        counts = Counter(parts)
        if len(counts) > MAX_CATEGORIES or any(len(v) > MAX_CATEGORY_CHARS for v in counts):
            continue
        if test in ordered or (check_order and _follows_input_order(np.asarray(parts, dtype=np.str_))):
            dropped += 1
            continue
        kept[test] = (frozenset(counts), _unseen(counts))
    return {
        "index": index,
        "placeholder": placeholder,
        "count": len(values),
        "ranges": ranges,
        "categories": kept,
        "dropped": dropped,
    }


def fit_value_view(
    detector: CalibratedDetector,
    vectors: FloatArray,
    labels: npt.ArrayLike | None,
    texts: Texts,
    values: Sequence[SlotValues],
    *,
    max_slots: int = DEFAULT_MAX_SLOTS,
    keep_values: bool = True,
) -> ValueView | None:
    """The value view of a detector just fitted on ``(vectors, labels, texts)``; None without slots.
    ``keep_values``: see ``ValueView.fit``.

    It uses the detector's own split of those events (``holdout_split`` with the detector's
    fraction, seed, labels as strata and calibration split — what ``CalibratedDetector.fit``
    did): slots are described from the fit part, and the combined threshold is set on the
    held-out part, whose pattern scores come from a detector that never fitted them (the fused
    detector's own leave-one-out scores, ``held_out_scores``). No normal event is spent twice.
    """
    n = len(texts)
    if len(values) != n or len(vectors) != n:
        raise ValueError("fit_value_view: one vector, text and SlotValues per training event")
    strata = None if labels is None else np.asarray(labels).astype(str)
    fit_idx, held_idx = holdout_split(
        n,
        fraction=detector.holdout_fraction,
        seed=detector.seed,
        strata=strata,
        order=detector.calibration_split,
    )
    view = ValueView.fit(
        [texts[i] for i in fit_idx],
        [values[i] for i in fit_idx],
        max_slots=max_slots,
        keep_values=keep_values,
    )
    if view.n_slots == 0:
        return None
    held_texts = [texts[i] for i in held_idx]
    own = detector.held_out_scores if isinstance(detector, FusedDetector) else None
    scores = own if own is not None else detector.score(vectors[held_idx], held_texts).score
    view.calibrate(scores, held_texts, [values[i] for i in held_idx], detector.target_fpr)
    return view
