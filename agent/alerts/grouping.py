"""Alert grouping: which anomalous events are published, per (input topic, partition, pattern).

With ``[alerts] group_by = "pattern"`` an alert storm of one kind of message becomes one alert and
one summary. The first anomalous event of a pattern on an input partition is published at once
and opens a **window** of ``cooldown_ms``; further anomalous events of that pattern on that
partition inside the window are counted (``suppressed``), not published, and the highest-scoring
of them is kept. When a window that suppressed something ends, one ``Summary`` is published
(count, window, the top event); a window that suppressed nothing just closes. The next event of
the pattern after the window opens a new one and is published again.

Why per *input* partition: the input partition is the unit of ownership in the consumer group,
so the instance that owns the partition owns its grouping state, and that state can be committed
with the partition's offsets (below) and handed over with the partition on a rebalance.

**Exactly once.** ``Grouper`` is pure, in-memory logic; the pipeline makes it durable the way
Kafka Streams makes a state store durable. Per batch it calls ``due`` and ``decide``, publishes
what they say, writes ``changes()`` (``encode_key``/``encode_state``, a ``None`` being a
tombstone) to the compacted changelog topic ``<alerts topic>.groups`` — the record of input
partition *p* to changelog partition *p* — in the *same* transaction as the alerts and the input
offsets, then calls ``commit()``; if the transaction aborts it calls ``rollback()``, which puts
the state back exactly as it was before the batch, and the rewound batch is decided again. On
assignment the pipeline replays the changelog partitions into ``restore`` before the partitions'
first batch; on revocation it calls ``drop_partition``. Since the state and the alerts commit or
vanish together, a kill -9 mid-storm neither opens a second window (a second "first" alert) nor
loses a suppressed count: the restarted agent decides the uncommitted batch again from the state
of the last committed one, with the same result.

Time is the caller's: every ``now_ms`` (wall-clock milliseconds) is passed in, never read here,
so the logic is deterministic and tests drive it. A clock that steps back only lengthens a window.

**Bounded.** At most ``max_groups`` states are kept (``decide`` enforces it). The victim is the
least recently *used* state — the smallest ``(last_seen_ms, key)``, an order that is stored in the
states themselves so that a restored grouper evicts exactly what the original would have. Strict
LRU was chosen over "idle states first": it is O(log n), and it nearly is "idle first" anyway,
since every open window was used within the last ``cooldown_ms``. Nothing counted is lost to an
eviction: a victim whose window suppressed events yields its ``Summary`` right away
(``evicted=True``, the window cut at ``now_ms``) in the ``Decision`` that evicted it, so it is
published in the same transaction as the victim's tombstone. Evicting an open window that
suppressed nothing means the pattern's next event alerts again; evicting a closed state forgets
its ``first_seen_ms``. Both only happen when more than ``max_groups`` (pattern, partition) pairs
are live at once. Each state costs about 550 bytes (measured with tracemalloc: the state, its
key, its alert id and heap entries) plus, while its window has suppressed events, its top event
(which the caller keeps small, e.g. with the alert's text limit): 100,000 groups are about 55 MB
plus the top events of the open windows.

Eviction order is a property of the states one instance holds: after a rebalance that changes
*which* partitions share an instance, what gets evicted can differ from what another assignment
would have evicted (still never losing a count).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent.alerts.state_json import load_state_json

__all__ = [
    "DEFAULT_COOLDOWN_MS",
    "DEFAULT_MAX_GROUPS",
    "STATE_VERSION",
    "Decision",
    "GroupKey",
    "GroupState",
    "Grouper",
    "Summary",
    "decode_key",
    "decode_state",
    "encode_key",
    "encode_state",
]

# (input topic, input partition, pattern id): the pattern id is the alert key (32 hex characters).
GroupKey = tuple[str, int, str]

DEFAULT_COOLDOWN_MS = 600_000
DEFAULT_MAX_GROUPS = 100_000
STATE_VERSION = 1

# Stale heap entries (superseded stamps, closed or evicted windows, dropped partitions) are
# skipped lazily; a heap is rebuilt from the live states once it holds this many more than them.
_HEAP_SLACK = 1024


@dataclass(slots=True)
class GroupState:
    """The grouping state of one (topic, partition, pattern); what the changelog stores.

    ``first_seen_ms``: time of the first alert of the pattern on the partition, kept across
    windows. ``last_seen_ms``: time of the latest ``decide`` for it (the LRU order).
    ``window_start_ms``: time of the alert that opened the current window, None when no window is
    open; ``window_alert_id``: that alert's id. ``suppressed``: events counted, not published, in
    the current window; ``max_score`` and ``top_event``: the highest-scoring of them (the caller's
    JSON object, stored as its JSON round trip); ``first_suppressed`` / ``last_suppressed``: the
    caller's ``position`` (e.g. offset and timestamp) of the first and the latest of them.
    Invariants: no window → ``suppressed == 0`` and no id / score / top event / positions;
    ``suppressed > 0`` ⇔ ``max_score`` and ``top_event`` are set.
    """

    first_seen_ms: int
    last_seen_ms: int
    window_start_ms: int | None = None
    window_alert_id: str | None = None
    suppressed: int = 0
    max_score: float | None = None
    top_event: dict[str, Any] | None = None
    first_suppressed: dict[str, Any] | None = None
    last_suppressed: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """A window that suppressed events, closed: publish it as one summary record.

    ``window_end_ms`` is ``window_start_ms + cooldown`` — or, with ``evicted=True``, the time the
    window was cut short because the grouper was full. ``top_event`` is the highest-scoring
    suppressed event (the first of equal scores), ``max_score`` its score.
    """

    key: GroupKey
    window_start_ms: int
    window_end_ms: int
    suppressed: int
    max_score: float
    top_event: dict[str, Any]
    first_seen_ms: int
    window_alert_id: str
    evicted: bool = False
    first_suppressed: dict[str, Any] | None = None
    last_suppressed: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one anomalous event.

    Publish every ``summaries`` entry first, in order (the event's own pattern's previous window,
    when it had ended without ``due`` closing it yet, and windows closed by an eviction), then the
    event's alert if ``publish``. ``first_seen_ms`` and ``window_start_ms`` describe the event's
    group after the decision (the window the event opened, or the one it was counted in).
    """

    publish: bool
    first_seen_ms: int
    window_start_ms: int
    summaries: tuple[Summary, ...] = ()


class Grouper:
    """Per-(topic, partition, pattern) cooldown windows with transactional undo. Not thread-safe:
    the pipeline loop owns it.

    Per batch: ``due(now_ms)`` and ``decide(...)`` for each anomalous event, then the changelog
    gets ``changes()`` in the batch's transaction, then ``commit()`` (committed) or
    ``rollback()`` (aborted). ``restore`` and ``drop_partition`` run between batches only (they
    raise RuntimeError while a batch has uncommitted changes).
    """

    def __init__(self, cooldown_ms: int = DEFAULT_COOLDOWN_MS, max_groups: int = DEFAULT_MAX_GROUPS) -> None:
        if cooldown_ms < 0:
            raise ValueError(f"cooldown_ms must be >= 0, got {cooldown_ms}")
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        self.cooldown_ms = cooldown_ms
        self.max_groups = max_groups
        self._states: dict[GroupKey, GroupState] = {}
        # The state of each key touched since the last commit, as it was before (None: absent).
        self._undo: dict[GroupKey, GroupState | None] = {}
        # Min-heaps with lazy deletion: (window end, key, window start), valid while the key's
        # window still starts there; (last_seen_ms, key), valid while the key was last seen then.
        self._ends: list[tuple[int, GroupKey, int]] = []
        self._lru: list[tuple[int, GroupKey]] = []

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: GroupKey) -> GroupState | None:
        """A copy of ``key``'s state, None when there is none."""
        state = self._states.get(key)
        return replace(state) if state is not None else None

    def open_windows(self) -> int:
        """Windows open now (a scan: call it now and then, not per event)."""
        return open_windows(self._states.values())

    def snapshot(self) -> dict[GroupKey, GroupState]:
        """Copies of all states (tests, debugging)."""
        return {key: replace(state) for key, state in self._states.items()}

    # ----------------------------------------------------------------- a batch

    def decide(
        self,
        key: GroupKey,
        now_ms: int,
        score: float,
        event: dict[str, Any],
        *,
        alert_id: str,
        position: dict[str, Any] | None = None,
    ) -> Decision:
        """Decide about one anomalous event of ``key`` scored ``score`` at ``now_ms``.

        No open window (or it has ended: ``now_ms >= window_start_ms + cooldown_ms``): publish,
        and open a window at ``now_ms`` for the alert ``alert_id`` (an ended window's summary comes
        first, in ``summaries``). Open window: count the event, keep it as ``top_event`` (a JSON
        round-trip copy of ``event``) if it scores higher than every event suppressed before it,
        do not publish. ``event`` is only used when suppressed; it must be JSON-serialisable
        without NaN or infinities (ValueError otherwise, before anything changes), as must
        ``score`` not be NaN. ``position`` (a small JSON object, e.g. offset and timestamp) of a
        suppressed event becomes the window's ``last_suppressed``, and its ``first_suppressed``
        when it is the first.
        """
        if math.isnan(score):
            raise ValueError(f"score of {key!r} is NaN")
        state = self._states.get(key)
        if (
            state is not None
            and state.window_start_ms is not None
            and now_ms < state.window_start_ms + self.cooldown_ms
        ):
            top = _json_copy(event) if state.max_score is None or score > state.max_score else None
            where = None if position is None else _json_copy(position)
            self._remember(key, state)
            if state.suppressed == 0:
                state.first_suppressed = where
            state.suppressed += 1
            state.last_suppressed = where
            if top is not None:
                state.max_score, state.top_event = float(score), top
            self._touch(key, state, now_ms)
            return Decision(False, state.first_seen_ms, state.window_start_ms)

        summaries: list[Summary] = []
        self._remember(key, state)
        if state is None:
            state = self._states[key] = GroupState(first_seen_ms=now_ms, last_seen_ms=now_ms)
            heapq.heappush(self._lru, (now_ms, key))
        elif state.window_start_ms is not None:  # ended, not collected by due() yet
            ended = self._close(key, state, state.window_start_ms + self.cooldown_ms, evicted=False)
            if ended is not None:
                summaries.append(ended)
        state.window_start_ms, state.window_alert_id = now_ms, alert_id
        self._push_end(key, state)
        self._touch(key, state, now_ms)
        summaries += self._evict(now_ms, keep=key)
        return Decision(True, state.first_seen_ms, now_ms, tuple(summaries))

    def due(self, now_ms: int) -> list[Summary]:
        """Close every window that has ended by ``now_ms``; the summaries of those that suppressed
        events, in order of window end (then key). Cost: O(log n) per window closed, nothing per
        open window, so calling it every batch is cheap whatever the number of groups."""
        out: list[Summary] = []
        ends = self._ends
        while ends and ends[0][0] <= now_ms:
            end, key, start = heapq.heappop(ends)
            state = self._states.get(key)
            if state is None or state.window_start_ms != start:
                continue  # stale: that window was closed, replaced, evicted or dropped
            self._remember(key, state)
            summary = self._close(key, state, end, evicted=False)
            if summary is not None:
                out.append(summary)
        return out

    def changes(self) -> dict[GroupKey, GroupState | None]:
        """The states changed since the last ``commit()``/``rollback()``: copies, None for a state
        deleted (evicted) — a tombstone. This is what the batch's transaction writes to the
        changelog. Keys that ended up as they were are left out."""
        out: dict[GroupKey, GroupState | None] = {}
        for key, before in self._undo.items():
            after = self._states.get(key)
            if after != before:
                out[key] = replace(after) if after is not None else None
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

    # ----------------------------------------------------------------- partitions

    def restore(self, key: GroupKey, state: GroupState | None) -> None:
        """Load one changelog record (at assignment, before the partition's first batch): the state,
        or None for a tombstone. Replaying a changelog partition in offset order leaves its latest
        states. Does not evict: ``max_groups`` is enforced by the next ``decide``. A restored window
        that has ended meanwhile is closed (with its summary) by the next ``due``."""
        self._between_batches("restore")
        if state is None:
            self._states.pop(key, None)
            return
        state = replace(state)
        self._states[key] = state
        self._index(key, state)

    def drop_partition(self, topic: str, partition: int) -> int:
        """Forget the states of an input partition (revoked: its new owner restores them from the
        changelog), without tombstones. Returns how many were dropped. O(number of groups)."""
        self._between_batches("drop_partition")
        doomed = [key for key in self._states if key[0] == topic and key[1] == partition]
        for key in doomed:
            del self._states[key]
        self._compact()
        return len(doomed)

    # ----------------------------------------------------------------- internals

    def _remember(self, key: GroupKey, state: GroupState | None) -> None:
        """Record ``key``'s pre-batch state before its first change in the batch."""
        if key not in self._undo:
            self._undo[key] = replace(state) if state is not None else None

    def _touch(self, key: GroupKey, state: GroupState, now_ms: int) -> None:
        if state.last_seen_ms != now_ms:  # else its entry (now_ms, key) is in the heap already
            state.last_seen_ms = now_ms
            heapq.heappush(self._lru, (now_ms, key))

    def _push_end(self, key: GroupKey, state: GroupState) -> None:
        assert state.window_start_ms is not None
        heapq.heappush(self._ends, (state.window_start_ms + self.cooldown_ms, key, state.window_start_ms))

    def _index(self, key: GroupKey, state: GroupState) -> None:
        """Give a (re)inserted state its heap entries; duplicates of valid entries are harmless."""
        heapq.heappush(self._lru, (state.last_seen_ms, key))
        if state.window_start_ms is not None:
            self._push_end(key, state)

    def _close(self, key: GroupKey, state: GroupState, end_ms: int, *, evicted: bool) -> Summary | None:
        """Close ``state``'s window; its summary when it suppressed events."""
        summary = None
        if state.suppressed > 0:
            assert state.window_start_ms is not None and state.window_alert_id is not None
            assert state.max_score is not None and state.top_event is not None
            summary = Summary(
                key=key,
                window_start_ms=state.window_start_ms,
                window_end_ms=end_ms,
                suppressed=state.suppressed,
                max_score=state.max_score,
                top_event=state.top_event,
                first_seen_ms=state.first_seen_ms,
                window_alert_id=state.window_alert_id,
                evicted=evicted,
                first_suppressed=state.first_suppressed,
                last_suppressed=state.last_suppressed,
            )
        state.window_start_ms = state.window_alert_id = None
        state.suppressed, state.max_score, state.top_event = 0, None, None
        state.first_suppressed = state.last_suppressed = None
        return summary

    def _evict(self, now_ms: int, keep: GroupKey) -> list[Summary]:
        """Evict least recently used states beyond ``max_groups``, never ``keep``."""
        out: list[Summary] = []
        kept: list[tuple[int, GroupKey]] = []
        states, lru = self._states, self._lru
        while len(states) > self.max_groups and lru:
            entry = heapq.heappop(lru)
            stamp, key = entry
            state = states.get(key)
            if state is None or state.last_seen_ms != stamp:
                continue  # stale
            if key == keep:
                kept.append(entry)
                continue
            self._remember(key, state)
            if state.window_start_ms is not None:
                end = state.window_start_ms + self.cooldown_ms
                summary = self._close(key, state, min(end, now_ms), evicted=now_ms < end)
                if summary is not None:
                    out.append(summary)
            del states[key]
        for entry in kept:
            heapq.heappush(lru, entry)
        return out

    def _compact(self) -> None:
        """Rebuild a heap that is mostly stale entries from the live states (amortised O(1))."""
        limit = 2 * len(self._states) + _HEAP_SLACK
        if len(self._lru) > limit:
            self._lru = [(state.last_seen_ms, key) for key, state in self._states.items()]
            heapq.heapify(self._lru)
        if len(self._ends) > limit:
            cooldown = self.cooldown_ms
            self._ends = [
                (state.window_start_ms + cooldown, key, state.window_start_ms)
                for key, state in self._states.items()
                if state.window_start_ms is not None
            ]
            heapq.heapify(self._ends)

    def _between_batches(self, what: str) -> None:
        if self._undo:
            raise RuntimeError(
                f"Grouper.{what} called while a batch has uncommitted changes; commit() or rollback() first"
            )


def _json_copy(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as the changelog will give it back (so a restored state equals the live one)."""
    try:
        copy = json.loads(json.dumps(event, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"the event is not JSON-serialisable without NaN/Infinity: {exc}") from None
    if not isinstance(copy, dict):
        raise ValueError(f"the event must be a JSON object, got {type(event).__name__}")
    return copy


# --------------------------------------------------------------------- changelog codec


def encode_key(key: GroupKey) -> bytes:
    """The changelog key of ``key``: compact JSON ``["<topic>",<partition>,"<pattern id>"]``.

    Canonical (one key, one byte string), as compaction compares keys by bytes. The input topic is
    part of it because several input topics share partition numbers and changelog partitions.
    """
    topic, partition, pattern_id = key
    if not isinstance(topic, str) or not isinstance(pattern_id, str):
        raise ValueError(f"group key {key!r}: topic and pattern id must be strings")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"group key {key!r}: partition must be an int >= 0")
    return json.dumps([topic, partition, pattern_id], separators=(",", ":")).encode("ascii")


def decode_key(data: bytes) -> GroupKey:
    """Inverse of ``encode_key``; ValueError naming the problem for anything else."""
    value = load_state_json(data, "group changelog key")
    if not (isinstance(value, list) and len(value) == 3):
        raise ValueError("group changelog key: expected a JSON array [topic, partition, pattern_id]")
    topic, partition, pattern_id = value
    if not isinstance(topic, str) or not isinstance(pattern_id, str):
        raise ValueError("group changelog key: topic and pattern id must be strings")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"group changelog key: partition must be an int >= 0, got {partition!r}")
    return (topic, partition, pattern_id)


def encode_state(state: GroupState) -> bytes:
    """The changelog value of ``state``: compact ASCII JSON with ``"v": 1``. Infinite scores are
    written as the strings ``"Infinity"``/``"-Infinity"`` (strict JSON has no such numbers), so
    ``decode_state(encode_state(s)) == s`` exactly. ValueError when ``top_event`` is not JSON."""
    document = {
        "v": STATE_VERSION,
        "first_seen_ms": state.first_seen_ms,
        "last_seen_ms": state.last_seen_ms,
        "window_start_ms": state.window_start_ms,
        "window_alert_id": state.window_alert_id,
        "suppressed": state.suppressed,
        "max_score": _encode_score(state.max_score),
        "top_event": state.top_event,
        "first_suppressed": state.first_suppressed,
        "last_suppressed": state.last_suppressed,
    }
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"group state is not JSON-serialisable: {exc}") from None


def decode_state(data: bytes) -> GroupState:
    """Inverse of ``encode_state``. ValueError with a clear message for anything that is not a
    version-1 state satisfying ``GroupState``'s invariants (garbage, another version, wrong types)."""
    what = "group changelog state"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("v")
    if version != STATE_VERSION:
        raise ValueError(
            f"{what}: unsupported version {version!r} (this agent reads version {STATE_VERSION}; "
            "a newer agent may have written it)"
        )
    first_seen = _int_field(doc, "first_seen_ms", what)
    last_seen = _int_field(doc, "last_seen_ms", what)
    suppressed = _int_field(doc, "suppressed", what)
    window_start = doc.get("window_start_ms")
    if window_start is not None:
        window_start = _int_field(doc, "window_start_ms", what)
    alert_id = doc.get("window_alert_id")
    if alert_id is not None and not isinstance(alert_id, str):
        raise ValueError(f"{what}: window_alert_id must be a string or null")
    max_score = _decode_score(doc.get("max_score"), what)
    top_event = doc.get("top_event")
    if top_event is not None and not isinstance(top_event, dict):
        raise ValueError(f"{what}: top_event must be an object or null")
    positions = [doc.get("first_suppressed"), doc.get("last_suppressed")]
    if any(p is not None and not isinstance(p, dict) for p in positions):
        raise ValueError(f"{what}: first_suppressed and last_suppressed must be objects or null")
    if suppressed == 0 and any(p is not None for p in positions):
        raise ValueError(f"{what}: first_suppressed/last_suppressed set although nothing was suppressed")
    if suppressed < 0:
        raise ValueError(f"{what}: suppressed must be >= 0, got {suppressed}")
    if window_start is None and (suppressed or alert_id is not None):
        raise ValueError(f"{what}: no window open but suppressed/window_alert_id set")
    if window_start is not None and alert_id is None:
        raise ValueError(f"{what}: a window is open but window_alert_id is null")
    if (suppressed > 0) != (max_score is not None) or (suppressed > 0) != (top_event is not None):
        raise ValueError(f"{what}: max_score and top_event must be set exactly when suppressed > 0")
    return GroupState(
        first_seen_ms=first_seen,
        last_seen_ms=last_seen,
        window_start_ms=window_start,
        window_alert_id=alert_id,
        suppressed=suppressed,
        max_score=max_score,
        top_event=top_event,
        first_suppressed=positions[0],
        last_suppressed=positions[1],
    )


def open_windows(states: Iterable[GroupState]) -> int:
    """How many of ``states`` have a window open."""
    return sum(1 for state in states if state.window_start_ms is not None)


def _int_field(doc: dict[str, Any], name: str, what: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: {name} must be an integer, got {value!r}")
    return value


def _encode_score(score: float | None) -> float | str | None:
    if score is not None and math.isinf(score):
        return "Infinity" if score > 0 else "-Infinity"
    return score


def _decode_score(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if value == "Infinity":
        return math.inf
    if value == "-Infinity":
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'{what}: max_score must be a number, "Infinity", "-Infinity" or null')
    return float(value)
