"""Session tracking: the open sessions of one input partition, in event time, scored as they go.

A **session** is the run of events that share a session key (``session_key``: a regex group on
the raw text such as ``blk_-?\\d+``, or a dotted event field such as ``trace_id``) on one input
partition, from its first event until it closes. Its events must share a partition (produce with
the session id as the record key, or use one partition): ``SessionTrackers.seen_elsewhere`` tells
the pipeline when a key is open on two partitions at once, so it can count it.

**Windows, in event time.** The partition's event time is the running maximum of its records'
timestamps (every record moves it, with or without a key, as grouping's does). Before each record
every open session whose deadline has passed closes: ``gap_seconds`` after its latest event
(``gap``), or ``max_seconds`` after its first (``max_seconds``); its ``max_events``-th event closes
it at once (``max_events``). Out of order within the gap: an event for an open session joins it
whatever its timestamp (the session's last time only ever grows); an event for a key with no open
session whose timestamp is already a whole gap behind the event time is **late** (its session
would have closed by now): it joins no session and is counted (``late``). A partition without
records cannot move its event time: ``due(wall_ms)`` closes what has ended by the wall clock
(grouping's idle rule); offline scoring ends with ``close_all()`` (``end_of_input``), what the
agent decides once the gap has passed.

**Verdicts.** ``event`` returns ``SessionVerdict`` s: a *decisive* verdict the first time a step
is decisive on its own (``SessionModel.step``: the session will be anomalous whatever comes next)
— alert at once; and a *close* verdict for each session that closes, which is an alert
(``alert=True``) when the session is anomalous and did not already alert on a decisive step. A
verdict carries what a session alert needs: key, event count, first/last offset and timestamp,
the unexpected steps (position, pattern, expected pattern, evidence, templates), the pattern
sequence deduplicated into runs (the first ``max_runs`` runs, then a count of events left out),
and the model's signature (its first decisive or most unexpected transition) for grouping.

**Exactly once**, as ``grouping.Grouper``: the tracker is pure, in-memory logic; per batch the
pipeline calls ``event``/``advance`` for its records, writes ``changes()`` (encoded changelog
records, tombstones for closed sessions) in the batch's transaction, then ``commit()``, or
``rollback()`` on abort, which puts every session, the event time and the late count back as they
were. ``restore`` loads changelog records before the partition's first batch. The partition's
event time is a changelog record of its own: with it a restarted tracker closes exactly what the
original would have (a session opened late by an out-of-order event closes at the same record).
A session's score depends only on its events in order (``SessionModel``), never on batches.

**Bounded.** At most ``max_open`` open sessions: beyond it the session nearest its deadline (the
least recently active one; ties by key) is closed early as ``evicted`` — scored on its steps only —
never the one the current event belongs to. Per open session the tracker keeps the model's state
(a few pattern ids, at most ``max_distinct`` counts, at most ``max_unexpected`` steps), offsets
and times, at most ``max_runs`` runs and the prepared text (cut to ``text_max_chars``) of unknown
patterns among its unexpected steps. Measured (bench/sessions.py, docs/sessions.md) on HDFS
block sessions of 10 events: 1.3-1.5 KB per open session with tracemalloc, and 100,000 open
sessions add about 145 MiB to a process's RSS.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.alerts.state_json import load_state_json
from agent.decode import lookup_field
from agent.model.sessions import (
    REASONS,
    SessionModel,
    SessionScore,
    SessionState,
    pattern_label,
    state_from_dict,
    state_to_dict,
)

__all__ = [
    "DEFAULT_MAX_OPEN",
    "DEFAULT_MAX_RUNS",
    "DEFAULT_TEXT_MAX_CHARS",
    "MAX_KEY_CHARS",
    "ChangelogKey",
    "OpenSession",
    "SessionTracker",
    "SessionTrackers",
    "SessionVerdict",
    "compile_key_pattern",
    "decode_key",
    "encode_key",
    "session_key",
]

DEFAULT_MAX_OPEN = 100_000
DEFAULT_MAX_RUNS = 32
DEFAULT_TEXT_MAX_CHARS = 256
#: longer keys are cut and suffixed with a hash of the whole key (bounded memory and records).
MAX_KEY_CHARS = 256
STATE_VERSION = 1
#: Compact ASCII JSON, NaN refused: what the changelog codecs write (one encoder, not one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_HEAP_SLACK = 1024
log = logging.getLogger(__name__)
_RUN_MAX = 2**32 - 1  # a run's count is a 32-bit unsigned ("L" is at least that)


# --------------------------------------------------------------------- keys


def compile_key_pattern(pattern: str) -> re.Pattern[str]:
    """The session-key regex; ValueError unless it compiles and has exactly one group."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"session key pattern {pattern!r} does not compile: {exc}") from None
    if compiled.groups != 1:
        raise ValueError(
            f"session key pattern {pattern!r} must have exactly one group, has {compiled.groups}"
        )
    return compiled


def session_key(
    text: str,
    fields: Mapping[str, Any] | None = None,
    *,
    pattern: re.Pattern[str] | None = None,
    field: str | None = None,
) -> str | None:
    """The session key of an event, None when it has none (it is then scored as a line only).

    ``pattern``: the first match's group in the **raw** text (before masking, which would turn
    ``blk_123`` into ``<BLK>``); ``field``: a dotted path into the event's fields (a string or
    integer value; booleans, objects, lists and empty strings are no key). Exactly one of them.
    A key longer than ``MAX_KEY_CHARS`` is cut and suffixed with 16 hex digits of its sha256.
    """
    if (pattern is None) == (field is None):
        raise ValueError("give exactly one of pattern= and field=")
    value: Any
    if pattern is not None:
        match = pattern.search(text)
        value = None if match is None else match.group(1)
    else:
        assert field is not None
        found, value = lookup_field(fields or {}, field)
        if not found or isinstance(value, bool) or not isinstance(value, str | int):
            return None
        value = str(value)
    if not value:
        return None
    if len(value) > MAX_KEY_CHARS:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        value = f"{value[: MAX_KEY_CHARS - 17]}~{digest}"
    return str(value)


# --------------------------------------------------------------------- sessions and verdicts


@dataclass(slots=True)
class OpenSession:
    """One open session: the model's ``state``, where it began and last was (offsets, timestamps
    in ms: ``last_ms`` the largest seen), whether a decisive step ``alerted``, its pattern runs
    (``runs``: pattern hashes, ``run_counts``: their lengths; the first ``max_runs`` runs, then
    ``omitted`` events) and ``texts``: prepared texts of unknown patterns it may have to show."""

    state: SessionState
    first_offset: int
    last_offset: int
    first_ms: int
    last_ms: int
    alerted: bool = False
    runs: array[int] = field(default_factory=lambda: array("Q"))
    run_counts: array[int] = field(default_factory=lambda: array("L"))
    omitted: int = 0
    texts: dict[int, str] | None = None

    def copy(self) -> OpenSession:
        state = self.state
        return OpenSession(
            state=SessionState(
                context=state.context,
                counts=dict(state.counts),
                events=state.events,
                max_surprise=state.max_surprise,
                previous=state.previous,
                decisive=state.decisive,
                unexpected=list(state.unexpected),
            ),
            first_offset=self.first_offset,
            last_offset=self.last_offset,
            first_ms=self.first_ms,
            last_ms=self.last_ms,
            alerted=self.alerted,
            runs=array("Q", self.runs),
            run_counts=array("L", self.run_counts),
            omitted=self.omitted,
            texts=None if self.texts is None else dict(self.texts),
        )


@dataclass(frozen=True, slots=True)
class SessionVerdict:
    """What the tracker decided about a session. ``kind``: ``"decisive"`` (a step decided it; the
    session stays open) or ``"close"``. ``alert``: publish a session alert for it. ``result``: the
    model's verdict (``result.reason``: why it closed, ``"open"`` for a decisive verdict)."""

    kind: str
    topic: str
    partition: int
    session: str
    alert: bool
    result: SessionScore
    first_offset: int
    last_offset: int
    first_ms: int
    last_ms: int
    sequence: tuple[tuple[int, int], ...]
    omitted: int
    templates: Mapping[int, str]

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a JSON object: everything a session alert shows."""
        result = self.result
        return {
            "kind": self.kind,
            "topic": self.topic,
            "partition": self.partition,
            "session": self.session,
            "alert": self.alert,
            "score": round(result.score, 6),
            "is_anomaly": result.is_anomaly,
            "decisive": result.decisive,
            "reason": result.reason,
            "events": result.events,
            "first": {"offset": self.first_offset, "timestamp_ms": self.first_ms},
            "last": {"offset": self.last_offset, "timestamp_ms": self.last_ms},
            "signature": result.signature,
            "evidence": dict(result.evidence),
            "unexpected": [step.to_dict(self.templates) for step in result.unexpected],
            "sequence": [
                {"pattern": pattern_label(p), "count": n}
                | ({"template": self.templates[p]} if p in self.templates else {})
                for p, n in self.sequence
            ],
            "sequence_omitted": self.omitted,
        }


# --------------------------------------------------------------------- the tracker


_UNSET: Any = object()


class SessionTracker:
    """The open sessions of one input partition (``topic``, ``partition``); see the module doc.
    Not thread-safe: the pipeline loop owns it."""

    def __init__(
        self,
        model: SessionModel,
        topic: str,
        partition: int,
        *,
        max_open: int = DEFAULT_MAX_OPEN,
        max_runs: int = DEFAULT_MAX_RUNS,
        text_max_chars: int = DEFAULT_TEXT_MAX_CHARS,
    ) -> None:
        if max_open < 1 or max_runs < 1 or text_max_chars < 1:
            raise ValueError("max_open, max_runs and text_max_chars must be >= 1")
        self.model = model
        self.topic = topic
        self.partition = partition
        self.max_open = max_open
        self.max_runs = max_runs
        self.text_max_chars = text_max_chars
        self._gap_ms = model.windows.gap_ms
        self._sessions: dict[str, OpenSession] = {}
        self._deadlines: list[tuple[int, str]] = []  # (deadline, key), lazily deleted
        self._event_time: int | None = None
        self.late = 0
        # Before the open batch: each touched session (None: absent), the event time, the late count.
        self._undo: dict[str, OpenSession | None] = {}
        self._time_undo: Any = _UNSET
        self._late_undo: Any = _UNSET

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    @property
    def event_time_ms(self) -> int | None:
        """The partition's event time: the largest record timestamp seen (None before any)."""
        return self._event_time

    def get(self, key: str) -> OpenSession | None:
        """A copy of the open session ``key``, None when there is none."""
        session = self._sessions.get(key)
        return None if session is None else session.copy()

    # ----------------------------------------------------------------- a batch

    def event(
        self, key: str | None, pattern: int, *, timestamp_ms: int, offset: int, text: str | None = None
    ) -> list[SessionVerdict]:
        """One record: its timestamp moves the event time (closing what ends before it); with a
        ``key`` its pattern (``pattern_hash`` of its prepared ``text``) is the session's next step.
        Returns the verdicts in order: sessions closed by the time passing, then this session's
        decisive verdict, then its close (``max_events``) or the eviction it caused."""
        out = self.advance(timestamp_ms)
        if key is None:
            return out
        session = self._sessions.get(key)
        new = session is None
        if session is None:
            if self._event_time is not None and timestamp_ms + self._gap_ms <= self._event_time:
                self._remember_late()
                self.late += 1
                return out
            self._remember(key, None)
            session = OpenSession(self.model.new_state(), offset, offset, timestamp_ms, timestamp_ms)
            self._sessions[key] = session
        else:
            self._remember(key, session)
        step = self.model.step(session.state, pattern)
        session.last_offset = offset
        session.last_ms = max(session.last_ms, timestamp_ms)
        self._run(session, pattern)
        if text is not None and pattern not in self.model:
            self._keep_text(session, pattern, text)
        if step.decisive and not session.alerted:
            session.alerted = True
            out.append(self._verdict("decisive", key, session, self.model.so_far(session.state), alert=True))
        if session.state.events >= self.model.windows.max_events:
            out.append(self._close(key, session, "max_events"))
            return out
        if new:  # an open session's entry moves on when it comes due (``due``)
            heapq.heappush(self._deadlines, (self._deadline(session), key))
        if len(self._sessions) > self.max_open:
            out += self._evict(keep=key)
        return out

    def advance(self, timestamp_ms: int) -> list[SessionVerdict]:
        """A record's timestamp: the event time moves to it (never back) and every session whose
        deadline it has reached closes (in order of deadline, then key)."""
        if self._event_time is None or timestamp_ms > self._event_time:
            if self._time_undo is _UNSET:
                self._time_undo = self._event_time
            self._event_time = timestamp_ms
        return self.due(self._event_time)

    def due(self, now_ms: int) -> list[SessionVerdict]:
        """Close every session whose deadline is at or before ``now_ms`` (the event time, or the
        wall clock of an idle partition: the event time does not move). O(log n) per session
        closed or per deadline that moved, nothing per open one.

        The heap holds each open session's deadline as it was when last pushed: a step moves a
        deadline only later, so an entry is never late, only early; when it comes due for a
        session whose deadline moved on it is pushed again at the current one (lazily: a step
        costs no heap operation). Entries of closed sessions are skipped."""
        heap = self._deadlines
        if not heap or heap[0][0] > now_ms:
            return []
        out: list[SessionVerdict] = []
        while heap and heap[0][0] <= now_ms:
            deadline, key = heapq.heappop(heap)
            session = self._sessions.get(key)
            if session is None:
                continue  # closed
            current = self._deadline(session)
            if current != deadline:
                if current > deadline:
                    heapq.heappush(heap, (current, key))
                continue  # early: pushed at its deadline (or a duplicate entry of it)
            self._remember(key, session)
            reason = self.model.windows.reason(session.first_ms, session.last_ms)
            out.append(self._close(key, session, reason))
        self._compact()
        return out

    def close_all(self, reason: str = "end_of_input") -> list[SessionVerdict]:
        """Close every open session (offline scoring at the end of its input), in order of
        deadline, then key."""
        if reason not in REASONS:
            raise ValueError(f"unknown close reason {reason!r}")
        order = sorted((self._deadline(s), key) for key, s in self._sessions.items())
        out = []
        for _, key in order:
            session = self._sessions[key]
            self._remember(key, session)
            out.append(self._close(key, session, reason))
        self._deadlines = []
        return out

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of the open batch: (key, value) per session changed since the
        last ``commit()``/``rollback()`` (None: closed — a tombstone) and, when the event time
        moved, the partition's clock record; sorted by key, so the output is canonical. Sessions
        that ended up as they were are left out."""
        out: list[tuple[bytes, bytes | None]] = []
        for key, before in self._undo.items():
            after = self._sessions.get(key)
            if after != before:
                value = None if after is None else encode_session(after, self.model.fingerprint)
                out.append((encode_key(ChangelogKey("session", self.topic, self.partition, key)), value))
        moved = self._time_undo is not _UNSET and self._time_undo != self._event_time
        if (
            moved or (self._late_undo is not _UNSET and self._late_undo != self.late)
        ) and self._event_time is not None:
            clock = ChangelogKey("session_clock", self.topic, self.partition, None)
            out.append((encode_key(clock), encode_clock(self._event_time, self.late)))
        return sorted(out)

    def commit(self) -> None:
        """The batch (and ``changes()``) committed: forget the undo log."""
        self._undo.clear()
        self._time_undo = self._late_undo = _UNSET
        self._compact()

    def rollback(self) -> None:
        """The batch aborted: every session, the event time and the late count back as they were
        after the last ``commit()``."""
        for key, before in self._undo.items():
            if before is None:
                self._sessions.pop(key, None)
            else:
                self._sessions[key] = before
                heapq.heappush(self._deadlines, (self._deadline(before), key))
        self._undo.clear()
        if self._time_undo is not _UNSET:
            self._event_time = self._time_undo
        if self._late_undo is not _UNSET:
            self.late = self._late_undo
        self._time_undo = self._late_undo = _UNSET
        self._compact()

    # ----------------------------------------------------------------- partitions

    def restore(self, key: bytes, value: bytes | None) -> None:
        """Load one changelog record of this partition (at assignment, before its first batch):
        a session (None: its tombstone) or the clock. Replaying the changelog partition in offset
        order leaves the latest state. ValueError for a record of another partition, garbage, or a
        session written under another session model (``SessionModel.fingerprint``). Does not evict
        or close: the next record does."""
        if self._undo or self._time_undo is not _UNSET or self._late_undo is not _UNSET:
            raise RuntimeError("SessionTracker.restore called while a batch has uncommitted changes")
        decoded = decode_key(key)
        if (decoded.topic, decoded.partition) != (self.topic, self.partition):
            raise ValueError(
                f"changelog record of {decoded.topic}[{decoded.partition}], not of this partition"
            )
        if decoded.kind == "session_clock":
            if value is None:
                self._event_time, self.late = None, 0
            else:
                self._event_time, self.late = decode_clock(value)
            return
        assert decoded.session is not None
        if value is None:
            self._sessions.pop(decoded.session, None)
            return
        session = decode_session(value, self.model)
        self._sessions[decoded.session] = session
        heapq.heappush(self._deadlines, (self._deadline(session), decoded.session))

    # ----------------------------------------------------------------- internals

    def _deadline(self, session: OpenSession) -> int:
        return self.model.windows.deadline_ms(session.first_ms, session.last_ms)

    def _remember(self, key: str, session: OpenSession | None) -> None:
        if key not in self._undo:
            self._undo[key] = None if session is None else session.copy()

    def _remember_late(self) -> None:
        if self._late_undo is _UNSET:
            self._late_undo = self.late

    def _run(self, session: OpenSession, pattern: int) -> None:
        runs, counts = session.runs, session.run_counts
        if runs and runs[-1] == pattern and counts[-1] < _RUN_MAX and not session.omitted:
            counts[-1] += 1
        elif len(runs) < self.max_runs and not session.omitted:
            runs.append(pattern)
            counts.append(1)
        else:
            session.omitted += 1

    def _keep_text(self, session: OpenSession, pattern: int, text: str) -> None:
        """Keep the text of an unknown pattern while one of the session's kept steps names it."""
        state = session.state
        named = {entry[2] for entry in state.unexpected}
        if state.decisive is not None:
            named.add(state.decisive[2])
        texts = session.texts or {}
        if pattern in named:
            texts[pattern] = text[: self.text_max_chars]
        session.texts = {p: t for p, t in texts.items() if p in named} or None

    def _close(self, key: str, session: OpenSession, reason: str) -> SessionVerdict:
        result = self.model.close(session.state, reason)
        del self._sessions[key]
        return self._verdict("close", key, session, result, alert=result.is_anomaly and not session.alerted)

    def _verdict(
        self, kind: str, key: str, session: OpenSession, result: SessionScore, *, alert: bool
    ) -> SessionVerdict:
        sequence = tuple(zip(session.runs.tolist(), session.run_counts.tolist(), strict=True))
        codes = {p for p, _ in sequence}
        for step in result.unexpected:
            codes.update((step.pattern, step.expected))
        templates: dict[int, str] = {}
        for code in codes:
            text = self.model.template(code)
            if text is None and session.texts is not None:
                text = session.texts.get(code)
            if text is not None:
                templates[code] = text
        return SessionVerdict(
            kind=kind,
            topic=self.topic,
            partition=self.partition,
            session=key,
            alert=alert,
            result=result,
            first_offset=session.first_offset,
            last_offset=session.last_offset,
            first_ms=session.first_ms,
            last_ms=session.last_ms,
            sequence=sequence,
            omitted=session.omitted,
            templates=templates,
        )

    def _evict(self, keep: str) -> list[SessionVerdict]:
        """Close the sessions nearest their deadline beyond ``max_open``, never ``keep``."""
        out: list[SessionVerdict] = []
        kept: list[tuple[int, str]] = []
        heap = self._deadlines
        while len(self._sessions) > self.max_open and heap:
            entry = heapq.heappop(heap)
            deadline, key = entry
            session = self._sessions.get(key)
            if session is None:
                continue
            current = self._deadline(session)
            if current != deadline:  # early (see ``due``): pushed again at its deadline
                if current > deadline:
                    heapq.heappush(heap, (current, key))
                continue
            if key == keep:
                kept.append(entry)
                continue
            self._remember(key, session)
            out.append(self._close(key, session, "evicted"))
        for entry in kept:
            heapq.heappush(heap, entry)
        return out

    def _compact(self) -> None:
        """Rebuild the deadline heap once it is mostly stale entries (amortised O(1))."""
        if len(self._deadlines) > 2 * len(self._sessions) + _HEAP_SLACK:
            self._deadlines = [(self._deadline(s), key) for key, s in self._sessions.items()]
            heapq.heapify(self._deadlines)


class SessionTrackers:
    """The trackers of the partitions an instance owns: routing, restore, revoke and the batch's
    changes across partitions. ``changes()`` gives (changelog partition, key, value) with the
    changelog partition equal to the input partition, as grouping's changelog does."""

    def __init__(
        self, model: SessionModel, *, max_open: int = DEFAULT_MAX_OPEN, max_runs: int = DEFAULT_MAX_RUNS
    ) -> None:
        self.model = model
        self.max_open = max_open
        self.max_runs = max_runs
        self._trackers: dict[tuple[str, int], SessionTracker] = {}
        self._touched: set[tuple[str, int]] = set()

    def tracker(self, topic: str, partition: int) -> SessionTracker:
        """The partition's tracker (made on first use); marked as touched by the open batch."""
        key = (topic, partition)
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = SessionTracker(
                self.model, topic, partition, max_open=self.max_open, max_runs=self.max_runs
            )
        self._touched.add(key)
        return tracker

    def open_sessions(self) -> int:
        return sum(len(t) for t in self._trackers.values())

    def seen_elsewhere(self, topic: str, partition: int, key: str) -> bool:
        """Whether ``key`` is open on another partition of ``topic`` owned here (a producer that
        does not key records by session)."""
        return any(
            key in tracker for (t, p), tracker in self._trackers.items() if t == topic and p != partition
        )

    def changes(self) -> list[tuple[int, bytes, bytes | None]]:
        out: list[tuple[int, bytes, bytes | None]] = []
        for topic, partition in sorted(self._touched):
            out += [(partition, k, v) for k, v in self._trackers[(topic, partition)].changes()]
        return out

    def commit(self) -> None:
        for key in self._touched:
            self._trackers[key].commit()
        self._touched = set()

    def rollback(self) -> None:
        for key in self._touched:
            self._trackers[key].rollback()
        self._touched = set()

    def restore(self, records: Iterable[tuple[bytes, bytes | None]], partitions: set[tuple[str, int]]) -> int:
        """Fresh trackers for ``partitions`` loaded from changelog ``records`` (in offset order);
        records of other partitions are skipped, and so, with a warning, is a record that does not
        decode (as grouping's restore does). Returns how many were loaded."""
        fresh = {
            p: SessionTracker(self.model, *p, max_open=self.max_open, max_runs=self.max_runs)
            for p in partitions
        }
        loaded = 0
        for key, value in records:
            try:
                decoded = decode_key(key)
                tracker = fresh.get((decoded.topic, decoded.partition))
                if tracker is not None:
                    tracker.restore(key, value)
                    loaded += 1
            except ValueError as exc:
                log.warning("session changelog record %r skipped: %s", bytes(key[:120]), exc)
        self._trackers.update(fresh)
        return loaded

    def drop_partition(self, topic: str, partition: int) -> int:
        """Forget a revoked partition (its next owner restores it from the changelog); returns how
        many open sessions it had."""
        tracker = self._trackers.pop((topic, partition), None)
        self._touched.discard((topic, partition))
        return 0 if tracker is None else len(tracker)


# --------------------------------------------------------------------- changelog codec


@dataclass(frozen=True, slots=True)
class ChangelogKey:
    """A session changelog key: ``kind`` ``"session"`` (with ``session``, the key) or ``"session_clock"``
    (the partition's event time as the sessions see it; ``session`` None)."""

    kind: str
    topic: str
    partition: int
    session: str | None


def encode_key(key: ChangelogKey) -> bytes:
    """Compact ASCII JSON **object** with sorted keys, e.g.
    ``{"kind":"session","partition":0,"session":"blk_1","topic":"t"}`` or
    ``{"kind":"session_clock","partition":0,"topic":"t"}``: canonical (compaction compares bytes), and never
    confused with grouping's keys, which are JSON arrays."""
    _check_key(key, "session changelog key")
    # What json.dumps(..., sort_keys=True, separators=(",", ":")) writes, without building and
    # sorting a dict per key (every batch writes a key per session it touched): 3 -> 1.5 µs.
    partition, topic = int.__repr__(key.partition), _ENCODER.encode(key.topic)
    if key.kind == "session":
        session = _ENCODER.encode(key.session)
        text = f'{{"kind":"session","partition":{partition},"session":{session},"topic":{topic}}}'
    else:
        text = f'{{"kind":"session_clock","partition":{partition},"topic":{topic}}}'
    return text.encode("ascii")


def decode_key(data: bytes) -> ChangelogKey:
    """Inverse of ``encode_key``; ValueError for anything else, including a non-canonical spelling
    of a valid key (two byte strings for one key would defeat compaction)."""
    what = "session changelog key"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(doc).__name__} (a grouping key?)")
    kind = doc.get("kind")
    expected = {"kind", "partition", "topic"} | ({"session"} if kind == "session" else set())
    if kind not in ("session", "session_clock") or set(doc) != expected:
        raise ValueError(f"{what}: expected the keys {sorted(expected)} with kind session or session_clock")
    key = ChangelogKey(kind, doc["topic"], doc["partition"], doc.get("session"))
    _check_key(key, what)
    if encode_key(key) != bytes(data):
        raise ValueError(f"{what}: not in canonical form (compact, sorted keys, ASCII)")
    return key


def encode_session(session: OpenSession, fingerprint: str) -> bytes:
    """The changelog value of an open session: compact ASCII JSON with ``"v": 1`` and the session
    model's fingerprint; ``decode_session`` inverts it exactly."""
    document = {
        "v": STATE_VERSION,
        "model": fingerprint,
        "first_offset": session.first_offset,
        "last_offset": session.last_offset,
        "first_ms": session.first_ms,
        "last_ms": session.last_ms,
        "alerted": session.alerted,
        "runs": [[p, n] for p, n in zip(session.runs.tolist(), session.run_counts.tolist(), strict=True)],
        "omitted": session.omitted,
        "texts": [[p, t] for p, t in sorted((session.texts or {}).items())],
        "state": state_to_dict(session.state),
    }
    return _ENCODER.encode(document).encode("ascii")


def decode_session(data: bytes, model: SessionModel) -> OpenSession:
    """Inverse of ``encode_session`` for ``model``; ValueError naming the problem for garbage,
    another version, another session model, or values that break the session's invariants."""
    what = "session changelog state"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object")
    if doc.get("v") != STATE_VERSION:
        raise ValueError(f"{what}: unsupported version {doc.get('v')!r} (this agent reads {STATE_VERSION})")
    if doc.get("model") != model.fingerprint:
        written = doc.get("model")
        raise ValueError(f"{what}: written under session model {written!r}, not {model.fingerprint!r}")
    known = {
        "v",
        "model",
        "first_offset",
        "last_offset",
        "first_ms",
        "last_ms",
        "alerted",
        "runs",
        "omitted",
        "texts",
        "state",
    }
    if set(doc) != known:
        raise ValueError(f"{what}: expected exactly the fields {sorted(known)}")
    ints = {
        name: _int(doc[name], f"{what}: {name}")
        for name in ("first_offset", "last_offset", "first_ms", "last_ms", "omitted")
    }
    if not isinstance(doc["alerted"], bool):
        raise ValueError(f"{what}: alerted must be true or false")
    if (
        ints["first_offset"] > ints["last_offset"]
        or ints["first_ms"] > ints["last_ms"]
        or ints["omitted"] < 0
    ):
        raise ValueError(f"{what}: offsets/times out of order or a negative omitted count")
    runs, counts = array("Q"), array("L")
    if not isinstance(doc["runs"], list):
        raise ValueError(f"{what}: runs must be a list of [pattern, count]")
    for run in doc["runs"]:
        if not isinstance(run, list) or len(run) != 2:
            raise ValueError(f"{what}: a run must be [pattern, count]")
        pattern, count = _int(run[0], f"{what}: a run's pattern"), _int(run[1], f"{what}: a run's count")
        if not (0 <= pattern < 2**64 and 1 <= count <= _RUN_MAX):
            raise ValueError(f"{what}: run {run!r} out of range")
        runs.append(pattern)
        counts.append(count)
    texts: dict[int, str] = {}
    if not isinstance(doc["texts"], list):
        raise ValueError(f"{what}: texts must be a list of [pattern, text]")
    for item in doc["texts"]:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], str):
            raise ValueError(f"{what}: a text must be [pattern, text]")
        texts[_int(item[0], f"{what}: a text's pattern")] = item[1]
    state = state_from_dict(doc["state"], model)
    if sum(counts) + ints["omitted"] != state.events:
        raise ValueError(
            f"{what}: runs and omitted events do not add up to the session's {state.events} events"
        )
    return OpenSession(
        state=state,
        first_offset=ints["first_offset"],
        last_offset=ints["last_offset"],
        first_ms=ints["first_ms"],
        last_ms=ints["last_ms"],
        alerted=doc["alerted"],
        runs=runs,
        run_counts=counts,
        omitted=ints["omitted"],
        texts=texts or None,
    )


def encode_clock(event_time_ms: int, late: int) -> bytes:
    """The changelog value of a partition's clock: its event time and late-event count."""
    return json.dumps(
        {"v": STATE_VERSION, "event_time_ms": event_time_ms, "late": late}, separators=(",", ":")
    ).encode("ascii")


def decode_clock(data: bytes) -> tuple[int, int]:
    """Inverse of ``encode_clock``: (event time ms, late events); ValueError for anything else."""
    what = "session changelog clock"
    doc = load_state_json(data, what)
    if not isinstance(doc, dict) or set(doc) != {"v", "event_time_ms", "late"} or doc["v"] != STATE_VERSION:
        raise ValueError(f'{what}: expected {{"v": {STATE_VERSION}, "event_time_ms", "late"}}')
    late = _int(doc["late"], f"{what}: late")
    if late < 0:
        raise ValueError(f"{what}: late must be >= 0")
    return _int(doc["event_time_ms"], f"{what}: event_time_ms"), late


def _check_key(key: ChangelogKey, what: str) -> None:
    if not isinstance(key.topic, str) or not key.topic:
        raise ValueError(f"{what}: topic must be a non-empty string")
    if isinstance(key.partition, bool) or not isinstance(key.partition, int) or key.partition < 0:
        raise ValueError(f"{what}: partition must be an int >= 0, got {key.partition!r}")
    if key.kind == "session" and (not isinstance(key.session, str) or not key.session):
        raise ValueError(f"{what}: session must be a non-empty string")
    if key.kind == "session_clock" and key.session is not None:
        raise ValueError(f"{what}: a clock key has no session")
    if key.kind not in ("session", "session_clock"):
        raise ValueError(f"{what}: kind must be session or session_clock, got {key.kind!r}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value
