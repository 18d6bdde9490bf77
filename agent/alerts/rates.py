"""Pattern rates: a known message surging (``spike``) or a steady one going quiet (``silence``).

Pure, in-memory logic shaped like ``agent.alerts.grouping``: one ``RateTracker`` per input
partition, time passed in by the caller, transactional undo (``changes``/``commit``/
``rollback``), ``restore``/``drop_partition`` for the consumer's assignment, a bound with LRU
eviction and a canonical changelog codec. docs/rates.md has the rule with its measurements.

**Keys and buckets.** A key is (input topic, input partition, pattern id, key-field values).
Events are counted per key in event-time buckets of ``bucket_ms``: bucket ``b`` holds the event
times ``[b·bucket_ms, (b+1)·bucket_ms)``. The event time is the caller's — the running maximum
of the partition's Kafka timestamps — so a replay decides exactly as live traffic did, whatever
the batches. A bucket is folded into its key's baseline when the key's next event falls in a
later bucket, the empty buckets in between in closed form: O(1) per event.

**Baseline.** Per key, over *all* buckets (the empty ones too), bias-corrected exponentially
weighted moving averages (EWMA): of the count ``x`` and ``x²`` with a fast half-life
(``fast_half_life_ms``, 1 h: today's level ``μ`` and variance ``V``) and of ``x`` with a slow one
(``slow_half_life_ms``, 1 day: the daily mean). Today's count model is negative binomial with
that mean and variance (real logs are overdispersed), Poisson when ``V <= μ``. And two
**records**, decaying with the slow half-life: ``busiest``, the key's largest bucket count, and
``worst_gap``, its longest run of empty buckets. The records carry what a count model fitted to
bursty logs gets wrong: a batch job's write path that runs at 20/min for hours and then stops
for hours, a pattern that bursts to 30× its mean several times a day. A rule needs both:
improbable *now*, and beyond what this key does on its own.

**Spike.** When a key's first event in a bucket arrives, the bucket's threshold is fixed::

    limit = max(min_count, ⌈min_ratio · max(μ_fast, μ_slow)⌉, ⌊spike_margin · busiest⌋ + 1, q)
    q = the smallest c with P(X >= c) < spike_alpha under Poisson(μ_fast)

and the event that brings the key's count in the bucket to ``limit`` is a spike, decided at that
event (mid-bucket: no waiting for the bucket to close), at most once per key and bucket. The
record carries the key's real right tail; ``q`` only keeps a spike significant at today's level
(an NB tail fitted by moments was measured to sit far beyond these keys' real peaks). ``q``
costs about 6 µs (scipy), so it is only computed once a count passes the other, integer terms.
A bucket that decided a spike is folded into the baseline and the record *winsorized* at
``limit``: one spike does not make spikes normal, while a lasting change of level is learned
(each alerting bucket raises the record to its threshold, and the alerts stop).

**Silence.** An empty bucket costs ``−ln P(X = 0)`` nats of surprise under today's model
(``μ·ln(D)/(D−1)`` for NB with dispersion ``D = V/μ``; ``μ`` for Poisson). When a key's first
event in a bucket arrives, the number of whole empty buckets after it that make a silence is fixed::

    after = max(⌈ln(1/silence_alpha) / nats per empty bucket⌉, ⌊gap_margin · worst_gap⌋ + 1)

(empty buckets taken as independent: ``P(no event in them) < silence_alpha``). A key is
**steady** — may report silences at all — when ``after <= steady_within_ms`` (one hour of
buckets). Its deadline goes into a heap and the silence is decided when the partition's time
passes it: ``advance``, which ``observe`` calls first. A quiet partition gets no events to move
its event time, so the caller passes the wall clock to ``advance`` (as grouping closes its
windows then), with grouping's caveat: an event that arrives later with an earlier timestamp is
decided differently than a replay would. One silence per episode: the key's next event ends it.
A gap is learned into ``worst_gap`` as at most ``after`` buckets, so a reported outage raises the
key's bar by ``gap_margin`` (decaying) instead of deafening the key.

**Warm-up.** A key alerts only once its baseline covers ``warmup_ms`` of event time (1 day, as
Datadog's log anomaly detection needs 24 h of data: a key's records must have seen one daily
cycle, its quiet hours and its busy ones). ``observe(..., seed=)`` starts a new key from a
``Baseline`` that ``learn`` makes from training data's event times, so known patterns need no
warm-up; a pattern new to the tracker starts learning at its first event.

**Exactly once.** As with grouping: per batch, ``observe``/``advance`` for the batch's records,
the changelog gets ``changes()`` (``encode_key``/``encode_state``, None a tombstone) in the batch's
transaction, then ``commit()``, or ``rollback()`` when it aborts, which puts every state back as
it was, so the rewound batch is decided again identically. A decision's ``basis()`` is the
deterministic basis of its alert id (key, kind, bucket start: a silence has no offset). The
caller's event time is not in the changelog: after a restart it starts again from the redelivered
records, which changes nothing while a partition's timestamps rise (one producer's clock).

**Bounded.** At most ``max_keys`` states per tracker; a new key beyond it evicts the least
recently seen one (the smallest ``(bucket, key)``, an order stored in the states, so a restored
tracker evicts what the original would have). Evicting loses the key's baseline and a silence
not yet decided for it; decisions already returned are the caller's. Each key costs about 800
bytes (tracemalloc, ``tests/test_rates.py``: the state with its numbers, a key with a
32-character pattern id and one field value, the dict entry, and its heap entries with the
heaps' slack; 700 without key fields): 100,000 keys are about 80 MB.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy import special

from agent.alerts.state_json import load_state_json

__all__ = [
    "DEFAULT_BUCKET_MS",
    "DEFAULT_FAST_HALF_LIFE_MS",
    "DEFAULT_GAP_MARGIN",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_MIN_RATIO",
    "DEFAULT_SILENCE_ALPHA",
    "DEFAULT_SLOW_HALF_LIFE_MS",
    "DEFAULT_SPIKE_ALPHA",
    "DEFAULT_SPIKE_MARGIN",
    "DEFAULT_STEADY_WITHIN_MS",
    "DEFAULT_WARMUP_MS",
    "STATE_VERSION",
    "Baseline",
    "RateDecision",
    "RateKey",
    "RateState",
    "RateTracker",
    "decode_key",
    "decode_state",
    "encode_key",
    "encode_state",
]

# (input topic, input partition, pattern id, key-field values rendered as strings by the caller).
RateKey = tuple[str, int, str, tuple[str, ...]]
Kind = Literal["spike", "silence"]

# The defaults, chosen by bench/rates.py's sweep (docs/rates.md#knobs).
DEFAULT_BUCKET_MS = 60_000
DEFAULT_MAX_KEYS = 100_000
DEFAULT_FAST_HALF_LIFE_MS = 3_600_000
DEFAULT_SLOW_HALF_LIFE_MS = 86_400_000
DEFAULT_WARMUP_MS = 86_400_000
DEFAULT_SPIKE_ALPHA = 1e-6
DEFAULT_MIN_COUNT = 10
DEFAULT_MIN_RATIO = 3.0
DEFAULT_SPIKE_MARGIN = 1.5
DEFAULT_SILENCE_ALPHA = 1e-6
DEFAULT_GAP_MARGIN = 2.0
DEFAULT_STEADY_WITHIN_MS = 3_600_000
STATE_VERSION = 1

# Stale heap entries are skipped lazily; the heaps are rebuilt once they hold this many more than live.
_HEAP_SLACK = 1024
# Changelog keys already encoded (encode_key), dropped when it grows past this.
_KEY_CACHE_MAX = 200_000
_NO_DECISIONS: tuple[RateDecision, ...] = ()
_encoded_keys: dict[RateKey, bytes] = {}
# json.dumps(example, separators=(",", ":"), allow_nan=False) without a new encoder per call.
_EXAMPLE_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(slots=True)
class RateState:
    """The rate state of one key; what the changelog stores.

    ``since_ms``: where the baseline starts (the key's first event, or its seed's first training
    event). ``bucket``: index of the key's latest bucket with an event; ``count``: its events so
    far (>= 1; not in the baseline yet). ``buckets``: buckets folded into the baseline.
    ``fast_sum``/``fast_squares``: the fast EWMA's unnormalised sums of the counts and of their
    squares; ``slow_sum``: the slow EWMA's of the counts (the weights' sums follow from
    ``buckets``). ``busiest``: the key's record bucket count, ``worst_gap``: its record run of
    empty buckets, both decaying with the slow half-life. ``spiked``: a spike was decided in
    ``bucket``. ``silent``: a silence was decided after ``bucket`` (the episode lasts until the
    key's next event). ``example``: the caller's small JSON object describing the first event of
    ``bucket`` (what a silence alert shows: the pattern's template and one recent event), stored
    with the state so that a restarted agent's alert is the same; kept only while a silence may
    be decided after ``bucket`` (the key is steady and warm by its deadline), None otherwise.
    ``floor``, ``limit``, ``after``: derived caches, not stored.
    """

    since_ms: int
    bucket: int
    count: int
    buckets: int = 0
    fast_sum: float = 0.0
    fast_squares: float = 0.0
    slow_sum: float = 0.0
    busiest: float = 0.0
    worst_gap: float = 0.0
    spiked: bool = False
    silent: bool = False
    example: dict[str, Any] | None = None
    # The bucket's count floor (no spike below it), its spike threshold (0: not computed yet) and
    # the empty buckets after it that make a silence (-1: the key is not steady).
    floor: int = field(default=0, compare=False, repr=False)
    limit: int = field(default=0, compare=False, repr=False)
    after: int = field(default=-1, compare=False, repr=False)

    def copy(self) -> RateState:
        """A copy, caches included (``dataclasses.replace`` costs three times as much: it is the
        undo log's copy of every key a batch touches)."""
        return RateState(
            self.since_ms,
            self.bucket,
            self.count,
            self.buckets,
            self.fast_sum,
            self.fast_squares,
            self.slow_sum,
            self.busiest,
            self.worst_gap,
            self.spiked,
            self.silent,
            self.example,
            self.floor,
            self.limit,
            self.after,
        )


@dataclass(frozen=True, slots=True)
class Baseline:
    """A key's baseline without its place in time: what ``learn`` makes and ``observe(seed=)``
    starts a key from. The fields mean what they mean in ``RateState``."""

    since_ms: int
    buckets: int
    fast_sum: float
    fast_squares: float
    slow_sum: float
    busiest: float
    worst_gap: float


@dataclass(frozen=True, slots=True)
class RateDecision:
    """A spike or a silence of ``key``: what its alert needs.

    ``at_ms``: when it was decided (the event time, or the wall clock given to ``advance``).
    ``bucket_start_ms``: spike: the start of the surging bucket; silence: the start of the first
    empty bucket (the episode's start). ``buckets``: how many buckets ``observed`` and
    ``expected`` cover (spike: 1; silence: the empty buckets that made it). ``observed``: events
    in them (spike: the count that reached the threshold; silence: 0); ``expected``: the events
    the baseline expects in them (``max(μ_fast, μ_slow)`` per bucket for a spike, ``μ_fast`` for
    a silence). ``threshold``: spike: the count that alerts; silence: the empty buckets that
    alert. ``score``: ``ln P / ln alpha`` of the observation under today's count model (Poisson
    at ``μ_fast`` for a spike, the NB for a silence): how many times beyond the kind's alpha;
    every decision scores at least 1.0 (its threshold may be higher still: a count floor or the
    key's record). ``baseline_since_ms``: where the baseline starts.
    """

    kind: Kind
    key: RateKey
    at_ms: int
    bucket_start_ms: int
    bucket_ms: int
    buckets: int
    observed: int
    expected: float
    threshold: int
    score: float
    baseline_since_ms: int

    @property
    def bucket_seconds(self) -> float:
        return self.bucket_ms / 1000

    def basis(self) -> str:
        """The deterministic basis of the alert's id: the key, the kind and the bucket start, as
        canonical JSON (a silence has no record, hence no offset; a replay gives the same)."""
        topic, partition, pattern, values = self.key
        return json.dumps(
            {
                "bucket_start_ms": self.bucket_start_ms,
                "key": [pattern, *values],
                "kind": self.kind,
                "partition": partition,
                "topic": topic,
            },
            separators=(",", ":"),
            sort_keys=True,
        )


class RateTracker:
    """Per-key event-time rates of one input partition, with transactional undo. Not thread-safe:
    the pipeline loop owns it. The rule is the module doc's; docs/rates.md has the measurements.

    Per batch: ``observe(key, t)`` for each record (``advance(t)`` for a record without a key), ``t``
    being the partition's event time, and ``advance(wall_ms)`` for a partition that has been
    quiet; then the changelog gets ``changes()`` in the batch's transaction, then ``commit()`` or
    ``rollback()``. ``restore`` and ``drop_partition`` run between batches only (RuntimeError
    while a batch has uncommitted changes).

    Cost (bench/rates.py on this 2-core machine, ``observe`` per record and ``commit`` per 1,024):
    0.7-1.3 µs per event on a stream whose keys see several events per bucket (hdfs_sessions),
    2-5.5 µs on sparse ones where nearly every event opens a bucket for its key (the fold, the
    next deadline, heap pushes: hdfs_2k, bgl_2k, 808 Thunderbird patterns); the Poisson quantile
    (about 6 µs) is computed at most once per key and bucket, and only when a count passes the
    floor.
    """

    def __init__(
        self,
        *,
        bucket_ms: int = DEFAULT_BUCKET_MS,
        max_keys: int = DEFAULT_MAX_KEYS,
        fast_half_life_ms: int = DEFAULT_FAST_HALF_LIFE_MS,
        slow_half_life_ms: int = DEFAULT_SLOW_HALF_LIFE_MS,
        warmup_ms: int = DEFAULT_WARMUP_MS,
        spike_alpha: float = DEFAULT_SPIKE_ALPHA,
        min_count: int = DEFAULT_MIN_COUNT,
        min_ratio: float = DEFAULT_MIN_RATIO,
        spike_margin: float = DEFAULT_SPIKE_MARGIN,
        silence_alpha: float = DEFAULT_SILENCE_ALPHA,
        gap_margin: float = DEFAULT_GAP_MARGIN,
        steady_within_ms: int = DEFAULT_STEADY_WITHIN_MS,
    ) -> None:
        if bucket_ms < 1:
            raise ValueError(f"bucket_ms must be >= 1, got {bucket_ms}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        if fast_half_life_ms < bucket_ms or slow_half_life_ms < bucket_ms:
            raise ValueError("fast_half_life_ms and slow_half_life_ms must be at least one bucket")
        if warmup_ms < 0 or steady_within_ms < 0:
            raise ValueError("warmup_ms and steady_within_ms must be >= 0")
        for name, alpha in (("spike_alpha", spike_alpha), ("silence_alpha", silence_alpha)):
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {alpha}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        for name, value in (
            ("min_ratio", min_ratio),
            ("spike_margin", spike_margin),
            ("gap_margin", gap_margin),
        ):
            if not (math.isfinite(value) and value >= 1.0):
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.bucket_ms = bucket_ms
        self.max_keys = max_keys
        self.fast_half_life_ms = fast_half_life_ms
        self.slow_half_life_ms = slow_half_life_ms
        self.warmup_ms = warmup_ms
        self.spike_alpha = spike_alpha
        self.min_count = min_count
        self.min_ratio = min_ratio
        self.spike_margin = spike_margin
        self.silence_alpha = silence_alpha
        self.gap_margin = gap_margin
        self.steady_within_ms = steady_within_ms
        # Per-bucket decay of each average, the surprise (nats) at each alpha, steadiness in buckets.
        self._fast = 0.5 ** (bucket_ms / fast_half_life_ms)
        self._slow = 0.5 ** (bucket_ms / slow_half_life_ms)
        self._spike_nats = -math.log(spike_alpha)
        self._silence_nats = -math.log(silence_alpha)
        self._steady_buckets = steady_within_ms // bucket_ms
        self._states: dict[RateKey, RateState] = {}
        # The state of each key touched since the last commit, as it was before (None: absent).
        self._undo: dict[RateKey, RateState | None] = {}
        # Min-heaps with lazy deletion: (silence deadline ms, key, bucket), valid while the key's
        # latest bucket is that bucket and no silence was decided since; (bucket, key): the LRU
        # order, valid while the key's latest bucket is that bucket.
        self._deadlines: list[tuple[int, RateKey, int]] = []
        self._lru: list[tuple[int, RateKey]] = []

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def get(self, key: RateKey) -> RateState | None:
        """A copy of ``key``'s state, None when there is none."""
        state = self._states.get(key)
        return state.copy() if state is not None else None

    def snapshot(self) -> dict[RateKey, RateState]:
        """Copies of all states (tests, debugging)."""
        return {key: state.copy() for key, state in self._states.items()}

    # ----------------------------------------------------------------- a batch

    def observe(
        self,
        key: RateKey,
        now_ms: int,
        *,
        seed: Baseline | None = None,
        example: Callable[[], dict[str, Any]] | None = None,
    ) -> tuple[RateDecision, ...]:
        """Count one event of ``key`` at the partition's event time ``now_ms``.

        Returns the silences due by ``now_ms`` (``advance``), then this event's spike if it brings
        the key's count in the bucket to the threshold. ``seed``: the baseline a key without state
        starts from (ignored when the key has one). ``example()`` is called when this event is
        the first of a bucket (the key's new or next bucket) *and* the key may go silent after it
        (steady, warm by its silence deadline): its JSON object becomes the state's ``example``,
        what the silence alert shows; a key that cannot go silent keeps none (``None``). It is
        never called for the other events, so it costs nothing per event, and a stream of sparse
        patterns (most keys not steady) neither builds nor writes examples to the changelog. An
        event time before the key's latest bucket (after a restart, whose event time starts again
        from the redelivered records) is counted in that bucket.
        """
        deadlines = self._deadlines
        out = self.advance(now_ms) if deadlines and deadlines[0][0] <= now_ms else _NO_DECISIONS
        state = self._states.get(key)
        if state is None:
            state = self._create(key, now_ms, seed)
            if example is not None and self._may_go_silent(state):
                state.example = example()
        else:
            if key not in self._undo:
                self._undo[key] = state.copy()
            bucket = now_ms // self.bucket_ms
            if bucket > state.bucket:
                self._roll(key, state, bucket)
                if example is not None:
                    state.example = example() if self._may_go_silent(state) else None
            else:
                state.count += 1
        if state.count < state.floor or state.spiked:
            return out
        spike = self._spike(key, state, now_ms)
        return out if spike is None else (*out, spike)

    def advance(self, now_ms: int) -> tuple[RateDecision, ...]:
        """The silences due by ``now_ms`` (the partition's event time, or the wall clock for a quiet
        partition), in deadline order, then key order. O(log n) per deadline passed, nothing per
        key whose deadline is ahead."""
        deadlines = self._deadlines
        if not deadlines or deadlines[0][0] > now_ms:
            return _NO_DECISIONS
        out: list[RateDecision] = []
        while deadlines and deadlines[0][0] <= now_ms:
            deadline, key, bucket = heapq.heappop(deadlines)
            state = self._states.get(key)
            if state is None or state.bucket != bucket or state.silent:
                continue  # stale: the key moved on, was evicted or dropped, or is silent already
            if deadline - state.since_ms < self.warmup_ms:
                continue  # the key was still warming up when the silence became news
            if key not in self._undo:
                self._undo[key] = state.copy()
            state.silent = True
            out.append(self._silence(key, state, deadline, now_ms))
        return tuple(out)

    def changes(self) -> dict[RateKey, RateState | None]:
        """The states changed since the last ``commit()``/``rollback()``: copies, None for a state
        deleted (evicted), a tombstone. Keys that ended up as they were are left out."""
        out: dict[RateKey, RateState | None] = {}
        for key, before in self._undo.items():
            after = self._states.get(key)
            if after != before:
                out[key] = after.copy() if after is not None else None
        return out

    def commit(self) -> None:
        """The batch (and ``changes()``) committed: forget the undo log."""
        self._undo.clear()
        self._compact()

    def rollback(self) -> None:
        """The batch aborted: put every state back exactly as it was after the last ``commit()``."""
        for key, before in self._undo.items():
            if before is None:
                self._states.pop(key, None)
            else:
                self._states[key] = before
                self._index(key, before)
        self._undo.clear()
        self._compact()

    def clear(self) -> None:
        """Forget every key (its tombstone is in ``changes()``): a new text preparation makes new
        templates, and the old ones must not all report silences."""
        for key, state in self._states.items():
            if key not in self._undo:
                self._undo[key] = state.copy()
        self._states.clear()

    # ----------------------------------------------------------------- seeding

    def learn(self, timestamps_ms: Iterable[int], *, until_ms: int | None = None) -> Baseline | None:
        """The baseline that a key with these event times (ascending: training data) has by the
        end of ``until_ms``'s bucket (default: the last event's), learned by this tracker's rule:
        what ``observe(seed=)`` starts the key from, so it needs no warm-up when the data covers
        ``warmup_ms``. None without timestamps. Trailing quiet buckets count as empty ones."""
        learner = RateTracker(
            bucket_ms=self.bucket_ms,
            fast_half_life_ms=self.fast_half_life_ms,
            slow_half_life_ms=self.slow_half_life_ms,
            warmup_ms=2**62,  # learning only: no decisions
            spike_alpha=self.spike_alpha,
            min_count=self.min_count,
            min_ratio=self.min_ratio,
            spike_margin=self.spike_margin,
            silence_alpha=self.silence_alpha,
            gap_margin=self.gap_margin,
            steady_within_ms=self.steady_within_ms,
        )
        key: RateKey = ("", 0, "", ())
        last = None
        for timestamp in timestamps_ms:
            learner.observe(key, timestamp)
            last = timestamp
        if last is None:
            return None
        state = learner._states[key]
        end_ms = last if until_ms is None else max(last, until_ms)
        learner._roll(key, state, end_ms // self.bucket_ms + 1)  # fold through the end's bucket
        return Baseline(
            since_ms=state.since_ms,
            buckets=state.buckets,
            fast_sum=state.fast_sum,
            fast_squares=state.fast_squares,
            slow_sum=state.slow_sum,
            busiest=state.busiest,
            worst_gap=state.worst_gap,
        )

    # ----------------------------------------------------------------- partitions

    def restore(self, key: RateKey, state: RateState | None) -> None:
        """Load one changelog record (at assignment, before the partition's first batch): the state,
        or None for a tombstone. Replaying a changelog partition in offset order leaves its latest
        states. Does not evict: ``max_keys`` is enforced when the next new key arrives. A silence
        whose deadline passed meanwhile is decided by the next ``advance``/``observe``."""
        self._between_batches("restore")
        if state is None:
            self._states.pop(key, None)
            return
        state = state.copy()
        self._states[key] = state
        self._index(key, state)

    def drop_partition(self, topic: str, partition: int) -> int:
        """Forget the states of an input partition (revoked: its new owner restores them from the
        changelog), without tombstones. Returns how many were dropped. O(number of keys)."""
        self._between_batches("drop_partition")
        doomed = [key for key in self._states if key[0] == topic and key[1] == partition]
        for key in doomed:
            del self._states[key]
        self._compact()
        return len(doomed)

    # ----------------------------------------------------------------- internals

    def _moments(self, state: RateState) -> tuple[float, float, float]:
        """(fast mean, fast variance, slow mean) of ``state``'s baseline, bias-corrected: each sum
        divided by the sum of its weights, ``(1 - d^n) / (1 - d)`` after ``n`` buckets."""
        buckets = state.buckets
        if not buckets:
            return 0.0, 0.0, 0.0
        fast, slow = self._fast, self._slow
        fast_weight = (1.0 - fast**buckets) / (1.0 - fast)
        fast_mean = state.fast_sum / fast_weight
        variance = max(state.fast_squares / fast_weight - fast_mean * fast_mean, 0.0)
        return fast_mean, variance, state.slow_sum * (1.0 - slow) / (1.0 - slow**buckets)

    def _create(self, key: RateKey, now_ms: int, seed: Baseline | None) -> RateState:
        self._undo.setdefault(key, None)
        bucket = now_ms // self.bucket_ms
        if seed is None:
            state = RateState(since_ms=now_ms, bucket=bucket, count=1)
        else:
            state = RateState(
                since_ms=seed.since_ms,
                bucket=bucket,
                count=1,
                buckets=seed.buckets,
                fast_sum=seed.fast_sum,
                fast_squares=seed.fast_squares,
                slow_sum=seed.slow_sum,
                busiest=seed.busiest,
                worst_gap=seed.worst_gap,
            )
        self._states[key] = state
        self._index(key, state)
        self._evict(keep=key)
        return state

    def _roll(self, key: RateKey, state: RateState, bucket: int) -> None:
        """Fold ``state``'s bucket and the empty ones before ``bucket`` into the baseline and the
        records, then open ``bucket`` with this event in it."""
        gap = bucket - state.bucket - 1
        # Winsorized: a bucket that decided a spike counts as its threshold would, and a gap that
        # decided a silence as the empty buckets that made it; a reported incident raises the
        # key's records by their margin (decaying) instead of teaching it that incidents are normal.
        count = min(state.count, self._limit(state)) if state.spiked else state.count
        quiet = min(gap, state.after) if state.silent else gap
        fast, slow = self._fast, self._slow
        fast_gap, slow_gap = fast**gap, slow**gap
        decay = slow_gap * slow
        state.fast_sum = (fast * state.fast_sum + count) * fast_gap
        state.fast_squares = (fast * state.fast_squares + count * count) * fast_gap
        state.slow_sum = (slow * state.slow_sum + count) * slow_gap
        state.busiest = max(state.busiest * decay, float(count))
        state.worst_gap = max(state.worst_gap * decay, float(quiet))
        state.buckets += gap + 1
        state.bucket, state.count = bucket, 1
        state.spiked = state.silent = False
        self._index(key, state)

    def _index(self, key: RateKey, state: RateState) -> None:
        """Derive ``state``'s caches for its bucket and give it its heap entries (LRU, silence
        deadline); duplicates of valid entries are harmless."""
        fast_mean, variance, slow_mean = self._moments(state)
        state.floor = max(
            self.min_count,
            math.ceil(self.min_ratio * max(fast_mean, slow_mean)),
            math.floor(self.spike_margin * state.busiest) + 1,
        )
        state.limit = 0
        state.after = -1
        heapq.heappush(self._lru, (state.bucket, key))
        per_bucket = _empty_nats(fast_mean, variance)
        steady = self._steady_buckets
        if per_bucket * steady < self._silence_nats:
            return  # not steady: a silence could not be news within steady_within_ms
        after = max(
            math.ceil(self._silence_nats / per_bucket), math.floor(self.gap_margin * state.worst_gap) + 1
        )
        if after > steady:
            return
        state.after = after
        if not state.silent:
            heapq.heappush(self._deadlines, ((state.bucket + 1 + after) * self.bucket_ms, key, state.bucket))

    def _may_go_silent(self, state: RateState) -> bool:
        """Whether a silence may be decided after ``state``'s bucket: the key is steady and warm
        by the deadline (``advance``'s test), so the bucket's example may be shown."""
        after = state.after
        return after >= 0 and (state.bucket + 1 + after) * self.bucket_ms - state.since_ms >= self.warmup_ms

    def _limit(self, state: RateState) -> int:
        """The spike threshold of ``state``'s bucket: the floor, or the count improbable under
        Poisson at today's level if higher (computed once per key and bucket, when a count
        reaches the floor)."""
        if not state.limit:
            fast_mean, _, _ = self._moments(state)
            state.limit = max(state.floor, _tail_limit(fast_mean, self.spike_alpha))
        return state.limit

    def _spike(self, key: RateKey, state: RateState, now_ms: int) -> RateDecision | None:
        """The count reached the floor: a spike if it reached the limit and the key is warm."""
        if state.count < self._limit(state) or now_ms - state.since_ms < self.warmup_ms:
            return None
        state.spiked = True
        fast_mean, _, slow_mean = self._moments(state)
        return RateDecision(
            kind="spike",
            key=key,
            at_ms=now_ms,
            bucket_start_ms=state.bucket * self.bucket_ms,
            bucket_ms=self.bucket_ms,
            buckets=1,
            observed=state.count,
            expected=max(fast_mean, slow_mean),
            threshold=state.limit,
            score=_tail_nats(fast_mean, state.count) / self._spike_nats,
            baseline_since_ms=state.since_ms,
        )

    def _silence(self, key: RateKey, state: RateState, deadline_ms: int, now_ms: int) -> RateDecision:
        empty = deadline_ms // self.bucket_ms - state.bucket - 1
        fast_mean, variance, _ = self._moments(state)
        return RateDecision(
            kind="silence",
            key=key,
            at_ms=now_ms,
            bucket_start_ms=(state.bucket + 1) * self.bucket_ms,
            bucket_ms=self.bucket_ms,
            buckets=empty,
            observed=0,
            expected=empty * fast_mean,
            threshold=empty,
            score=empty * _empty_nats(fast_mean, variance) / self._silence_nats,
            baseline_since_ms=state.since_ms,
        )

    def _evict(self, keep: RateKey) -> None:
        """Evict least recently seen states beyond ``max_keys``, never ``keep``."""
        kept: list[tuple[int, RateKey]] = []
        states, lru = self._states, self._lru
        while len(states) > self.max_keys and lru:
            entry = heapq.heappop(lru)
            bucket, key = entry
            state = states.get(key)
            if state is None or state.bucket != bucket:
                continue  # stale
            if key == keep:
                kept.append(entry)
                continue
            if key not in self._undo:
                self._undo[key] = state.copy()
            del states[key]
        for entry in kept:
            heapq.heappush(lru, entry)

    def _compact(self) -> None:
        """Rebuild a heap from the live states once it is mostly stale entries (amortised O(1)).
        A deadline that already passed is put back too: the next ``advance`` skips it again for
        the reason it was skipped (warm-up), so where batches end changes nothing."""
        states, limit = self._states, 2 * len(self._states) + _HEAP_SLACK
        if len(self._lru) > limit:
            self._lru = [(state.bucket, key) for key, state in states.items()]
            heapq.heapify(self._lru)
        if len(self._deadlines) > limit:
            bucket_ms = self.bucket_ms
            self._deadlines = [
                ((state.bucket + 1 + state.after) * bucket_ms, key, state.bucket)
                for key, state in states.items()
                if state.after >= 0 and not state.silent
            ]
            heapq.heapify(self._deadlines)

    def _between_batches(self, what: str) -> None:
        if self._undo:
            raise RuntimeError(
                f"RateTracker.{what} called while a batch has uncommitted changes; "
                "commit() or rollback() first"
            )


# --------------------------------------------------------------------- count model


def _empty_nats(mean: float, variance: float) -> float:
    """``−ln P(X = 0)``: the surprise of one empty bucket, ``μ·ln(D)/(D−1)`` with ``D = V/μ``
    (NB), ``μ`` when ``D <= 1`` (Poisson)."""
    if mean <= 0.0:
        return 0.0
    dispersion = variance / mean
    if dispersion <= 1.0 + 1e-9:
        return mean
    return mean * math.log(dispersion) / (dispersion - 1.0)


def _tail_nats(mean: float, count: int) -> float:
    """``−ln P(X >= count)`` under Poisson(mean); infinite when the probability underflows."""
    tail = float(special.pdtrc(count - 1, mean)) if count > 0 else 1.0
    return -math.log(tail) if tail > 0.0 else math.inf


def _tail_limit(mean: float, alpha: float) -> int:
    """The smallest count c >= 1 with P(X >= c) < alpha under Poisson(mean): scipy's inverse CDF
    as a first guess, then the exact integer by stepping (a few ``pdtrc`` calls, about 6 µs)."""
    if mean <= 0.0:
        return 1
    guess = special.pdtrik(1.0 - alpha, mean)
    count = max(1, int(guess) + 1) if math.isfinite(guess) else max(1, math.ceil(mean))
    surprise = -math.log(alpha)
    while _tail_nats(mean, count) <= surprise:
        count += 1
    while count > 1 and _tail_nats(mean, count - 1) > surprise:
        count -= 1
    return count


# --------------------------------------------------------------------- changelog codec


def encode_key(key: RateKey) -> bytes:
    """The changelog key of ``key``: compact JSON with sorted keys,
    ``{"key":["<pattern id>",<field values>...],"kind":"rate","partition":<p>,"topic":"<topic>"}``.

    Canonical (one key, one byte string: compaction compares bytes), ASCII, and an object where
    grouping's keys are arrays, so neither codec accepts the other's keys even in a shared topic.
    Every batch writes the key of every state it changed, so encodings are memoised (at most
    ``_KEY_CACHE_MAX``, about 200 bytes each; a key whose partition is not exactly an ``int`` is
    never looked up, so ``True`` or ``1.0`` cannot pass for partition 1).
    """
    cacheable = type(key) is tuple and len(key) == 4 and type(key[1]) is int and type(key[3]) is tuple
    if cacheable:
        try:
            cached = _encoded_keys.get(key)
        except TypeError:  # an unhashable part: refused below
            cacheable = False
        else:
            if cached is not None:
                return cached
    topic, partition, pattern_id, values = key
    if not isinstance(topic, str) or not isinstance(pattern_id, str):
        raise ValueError(f"rate key {key!r}: topic and pattern id must be strings")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"rate key {key!r}: partition must be an int >= 0")
    if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"rate key {key!r}: key-field values must be a tuple of strings")
    document = {"key": [pattern_id, *values], "kind": "rate", "partition": partition, "topic": topic}
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("ascii")
    if cacheable:
        if len(_encoded_keys) >= _KEY_CACHE_MAX:
            _encoded_keys.clear()
        _encoded_keys[key] = data
    return data


def decode_key(data: bytes) -> RateKey:
    """Inverse of ``encode_key``; ValueError naming the problem for anything else (a grouping key,
    a non-canonical spelling, wrong types)."""
    what = "rate changelog key"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict) or set(doc) != {"key", "kind", "partition", "topic"}:
        raise ValueError(f'{what}: expected an object with "key", "kind", "partition" and "topic"')
    if doc["kind"] != "rate":
        raise ValueError(f'{what}: kind must be "rate", got {doc["kind"]!r}')
    topic, partition, parts = doc["topic"], doc["partition"], doc["key"]
    if not isinstance(topic, str):
        raise ValueError(f"{what}: topic must be a string")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"{what}: partition must be an int >= 0, got {partition!r}")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"{what}: key must be a non-empty array of strings [pattern id, field values...]")
    key: RateKey = (topic, partition, parts[0], tuple(parts[1:]))
    if encode_key(key) != bytes(data):
        raise ValueError(f"{what}: not in canonical form (compact, sorted keys, ASCII)")
    return key


_INT_FIELDS = ("since_ms", "bucket", "count", "buckets")
_FLOAT_FIELDS = ("fast_sum", "fast_squares", "slow_sum", "busiest", "worst_gap")
_BOOL_FIELDS = ("spiked", "silent")


def encode_state(state: RateState) -> bytes:
    """The changelog value of ``state``: compact ASCII JSON with ``"v": 1`` and the stored fields
    (not the caches); ``decode_state(encode_state(s)) == s`` exactly (floats are written as their
    shortest round-trip repr). ValueError for a state that could not be decoded (non-finite
    sums, wrong types).

    Every batch writes every state it changed (on a stream of sparse patterns, about one record
    per two events), so a state of exact types is formatted directly — the same bytes as
    ``json.dumps`` of the document, about 5 µs with its example instead of 10 — and anything else
    goes through the checked generic path."""
    since, bucket, count, buckets = state.since_ms, state.bucket, state.count, state.buckets
    sums = (state.fast_sum, state.fast_squares, state.slow_sum, state.busiest, state.worst_gap)
    spiked, silent, example = state.spiked, state.silent, state.example
    if not (
        type(since) is int
        and type(bucket) is int
        and type(count) is int
        and type(buckets) is int
        and count >= 1
        and buckets >= 0
        and all(type(x) is float and 0.0 <= x < math.inf for x in sums)
        and type(spiked) is bool
        and type(silent) is bool
        and (example is None or type(example) is dict)
    ):
        return _encode_state_checked(state)
    if example is None:
        shown = "null"
    else:
        try:
            shown = _EXAMPLE_ENCODER.encode(example)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"rate state: the example is not JSON-serialisable: {exc}") from None
    fast_sum, fast_squares, slow_sum, busiest, worst_gap = sums
    return (
        f'{{"v":{STATE_VERSION},"since_ms":{since},"bucket":{bucket},"count":{count},'
        f'"buckets":{buckets},"fast_sum":{fast_sum!r},"fast_squares":{fast_squares!r},'
        f'"slow_sum":{slow_sum!r},"busiest":{busiest!r},"worst_gap":{worst_gap!r},'
        f'"spiked":{"true" if spiked else "false"},"silent":{"true" if silent else "false"},'
        f'"example":{shown}}}'
    ).encode("ascii")


def _encode_state_checked(state: RateState) -> bytes:
    """``encode_state`` for any state: the document checked field by field, then ``json.dumps``."""
    document: dict[str, Any] = {"v": STATE_VERSION}
    for name in (*_INT_FIELDS, *_FLOAT_FIELDS, *_BOOL_FIELDS):
        document[name] = getattr(state, name)
    document["example"] = state.example
    _check_state(document, "rate state")
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rate state: the example is not JSON-serialisable: {exc}") from None


def decode_state(data: bytes) -> RateState:
    """Inverse of ``encode_state``. ValueError with a clear message for anything that is not a
    version-1 state satisfying ``RateState``'s invariants (garbage, another version, wrong types,
    missing or unknown fields, negative counts, non-finite numbers)."""
    what = "rate changelog state"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("v")
    if isinstance(version, bool) or version != STATE_VERSION:
        raise ValueError(
            f"{what}: unsupported version {version!r} (this agent reads version {STATE_VERSION}; "
            "a newer agent may have written it)"
        )
    _check_state(doc, what)
    return RateState(
        since_ms=doc["since_ms"],
        bucket=doc["bucket"],
        count=doc["count"],
        buckets=doc["buckets"],
        fast_sum=float(doc["fast_sum"]),
        fast_squares=float(doc["fast_squares"]),
        slow_sum=float(doc["slow_sum"]),
        busiest=float(doc["busiest"]),
        worst_gap=float(doc["worst_gap"]),
        spiked=doc["spiked"],
        silent=doc["silent"],
        example=doc["example"],
    )


def _check_state(doc: dict[str, Any], what: str) -> None:
    expected = {"v", *_INT_FIELDS, *_FLOAT_FIELDS, *_BOOL_FIELDS, "example"}
    if set(doc) != expected:
        missing, unknown = sorted(expected - set(doc)), sorted(set(doc) - expected)
        raise ValueError(f"{what}: fields missing {missing}, unknown {unknown}")
    for name in _INT_FIELDS:
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what}: {name} must be an integer, got {value!r}")
    for name in _FLOAT_FIELDS:
        value = doc[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{what}: {name} must be a finite number >= 0, got {value!r}")
    for name in _BOOL_FIELDS:
        if not isinstance(doc[name], bool):
            raise ValueError(f"{what}: {name} must be true or false, got {doc[name]!r}")
    if doc["count"] < 1 or doc["buckets"] < 0:
        raise ValueError(f"{what}: count must be >= 1 and buckets >= 0")
    if doc["example"] is not None and not isinstance(doc["example"], dict):
        raise ValueError(f"{what}: example must be an object or null")
