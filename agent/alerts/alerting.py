"""Alerts people can act on: from a batch's scored events to the records it publishes.

Per batch the pipeline hands over every scored event, in offset order per partition, and gets
back the records to produce in the batch's transaction:

1. **rates** (``[rates] enabled``, ``agent.alerts.partition_rates``): every event counts under its
   pattern's key in event-time buckets; a **spike** (a known pattern surging) is grouped like an
   anomaly (one alert per key and cooldown, then a summary), a **silence** (a steady pattern
   stopped) is one alert per episode;
2. **sessions** (``[sessions] enabled``, ``agent.alerts.sessions``): an event with a session key
   (a block, a request, a job) is its session's next step, scored as it arrives; a step that is
   decisive on its own alerts at once, else the session alerts when it closes (its gap passed, a
   cap, eviction) if it scored anomalous. Session alerts are grouped by how the session failed
   (its signature): one alert per signature and cooldown, then a summary;
3. **muted** patterns are dropped: an operator's latest verdict on the pattern is ``normal``
   (``topics.feedback``, ``agent.alerts.verdicts``; the ``rate`` scope mutes spikes and silences);
4. with ``alerts.group_by = "pattern"`` (the default) each anomalous event (score > 1.0) is decided
   by its partition's ``Grouper`` (``agent.alerts.grouping``): the first anomalous event of a
   pattern on an input partition is an **alert** and opens a cooldown window; the next ones inside
   it are counted; a window that counted any closes with one **summary** (count, window, first and
   last counted event, the highest-scoring one); with ``"event"`` every anomalous event is an
   alert, as before;
5. the **changelog** records (``agent.kafka.changelog``, one compacted topic, several kinds of
   key): every grouping window, rate key, open session and partition event time the batch changed, to the
   changelog partition of the same number as its input partition, in the same transaction — so
   the state a restarted agent reads back is exactly that of its last committed batch, and a
   redelivered batch is decided exactly as before, its timestamps included.

``committed()`` / ``aborted()`` close the batch: counters move, and Alertmanager is handed the
committed alerts, only after the commit; an aborted batch's grouping decisions are rolled back and
taken again when the batch is redelivered. ``restore`` and ``forget`` follow the consumer's
assignment between batches.

**Time is the events' time** (their Kafka timestamps; the wall clock for a record without one),
so a replay decides like live traffic: whether an event opens a window or is counted in one
depends only on the timestamps and order of its partition's events. A partition's windows close
as its event time passes their end — checked before each event, so where batches happen to begin
(which differs after a crash) changes nothing. A partition that gets no records cannot move its
event time: once its windows have ended by the wall clock, it has been quiet for
``IDLE_CLOSE_S`` *and* the consumer has read all it holds (``caught_up``: a partition with a
backlog is slow to reach, not quiet, however long that takes on a busy machine), they close on
the wall clock (``Pipeline`` calls ``batch`` with no events while idle, and the summaries come out
as a batch of their own). Only an event arriving out of order after such a close is decided
differently than it would have been in a replay.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message

from agent.alerts.feedback import Verdicts
from agent.alerts.grouping import (
    Decision,
    Grouper,
    Summary,
    decode_key,
    decode_state,
    encode_key,
    encode_state,
)
from agent.alerts.partition_rates import RatePartitions, example
from agent.alerts.rates import RateDecision
from agent.alerts.sessions import SessionTrackers, SessionVerdict, compile_key_pattern, session_key
from agent.config import ConfigError, GroupBy, Settings
from agent.kafka.delivery import OutgoingRecord
from agent.kafka.source import PartitionKey
from agent.model.bundle import Bundle
from agent.model.examples import pattern_hash
from agent.model.patterns import PatternScore
from agent.model.sessions import SessionModel
from exporters.alerts import (
    AlertSource,
    GroupInfo,
    PatternInfo,
    RateInfo,
    alert_id,
    build_alert,
    json_safe,
    pattern_id,
    rate_alert_id,
    session_alert_id,
)
from exporters.metrics import AgentMetrics

__all__ = ["Alerting", "Scored"]

log = logging.getLogger(__name__)

# A summary's event is kept in the grouping state (and its changelog record) until the window
# ends: its fields are kept only up to this size, so one record with huge fields cannot make the
# changelog record too large (the summary then says fields_truncated).
TOP_EVENT_FIELDS_MAX_BYTES = 8_192
# A partition without records this long (wall clock) has its ended windows closed by the wall clock.
IDLE_CLOSE_S = 5.0
# How often the open-window and rate-key gauges are recomputed (a scan of the states).
OPEN_WINDOWS_EVERY_S = 5.0
CLOCK_VERSION = 1


@dataclass(frozen=True, slots=True)
class Scored:
    """One scored event of the batch: where it came from, its text, what the model said of its
    pattern (``result``) and of the event itself: ``score`` (> 1.0: anomalous; the pattern's score
    with the evidence of the event's own values, ``agent.model.patterns.event_score``) and
    ``value``, the unusual value when it made the difference (the alert's ``value`` object)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    text: str
    prepared: str
    fields: dict[str, Any]
    result: PatternScore
    score: float
    value: dict[str, Any] | None = None


@dataclass
class _Pending:
    """What the open batch will count and hand to Alertmanager once it commits."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    summaries: int = 0
    suppressed: int = 0
    muted: int = 0
    rate_alerts: Counter[str] = field(default_factory=Counter)
    session_alerts: int = 0
    sessions_closed: Counter[str] = field(default_factory=Counter)
    session_keys_split: int = 0


class Alerting:
    """Decides which anomalous events become alerts and builds their records; see the module doc.
    Not thread-safe: the loop owns it (``Verdicts`` is the only shared part, and it locks)."""

    def __init__(self, settings: Settings, *, metrics: AgentMetrics, verdicts: Verdicts | None) -> None:
        alerts = settings.alerts
        self._settings = settings
        self._metrics = metrics
        self._verdicts = verdicts
        self._cooldown_s = alerts.cooldown_seconds
        self._cooldown_ms = round(alerts.cooldown_seconds * 1000)
        self._grouping = alerts.group_by is GroupBy.PATTERN
        self._rates = RatePartitions(settings.rates) if settings.rates.enabled else None
        sessions = settings.sessions
        self._session_pattern = (
            None if sessions.key_pattern is None else compile_key_pattern(sessions.key_pattern)
        )
        self._sessions: SessionTrackers | None = None  # with the bundle's model: use_session_model
        self._session_hashes: dict[str, int] = {}
        # One grouper per assigned input partition: its event time, its windows, its bound.
        self._groupers: dict[PartitionKey, Grouper] = {}
        self._event_time: dict[PartitionKey, int] = {}
        self._event_time_undo: dict[PartitionKey, int | None] = {}  # before the open batch
        self._last_record: dict[PartitionKey, float] = {}  # monotonic time of its last record
        self._touched: set[PartitionKey] = set()
        self._open_counted_at = 0.0
        self._changelog = settings.topics.groups_topic()
        self._pending = _Pending()
        self.record_max_bytes: int | None = None

    @property
    def grouping(self) -> bool:
        return self._grouping

    @property
    def stateful(self) -> bool:
        """Whether decisions keep state per partition (grouping, rates, sessions): the changelog
        is needed."""
        return self._grouping or self._rates is not None or self._settings.sessions.enabled

    def use_session_model(self, model: SessionModel | None) -> None:
        """Track sessions with ``model`` (the bundle's; called at start and on a reload). A model
        with other windows than ``[sessions]`` names is a ConfigError; a new model starts the
        sessions afresh (the open ones of the old model are not scored: their states do not fit)."""
        settings = self._settings.sessions
        if not settings.enabled:
            return
        if model is None:
            raise ConfigError(
                "sessions.enabled but the bundle has no session model: train it with "
                "--session-key-pattern or --session-key-field, or set sessions.enabled = false"
            )
        windows = model.windows
        for name in ("gap_seconds", "max_seconds", "max_events"):
            wanted = getattr(settings, name)
            if wanted is not None and wanted != getattr(windows, name):
                raise ConfigError(
                    f"sessions.{name} = {wanted} but the bundle's session model was trained with "
                    f"{getattr(windows, name)}: leave it unset (the model's) or re-train with it"
                )
        if self._sessions is not None and self._sessions.model.fingerprint == model.fingerprint:
            return
        if self._sessions is not None:
            log.warning(
                "a new session model: %d open session(s) of the old one are not scored",
                self._sessions.open_sessions(),
            )
        self._sessions = SessionTrackers(model, max_open=settings.max_open, max_runs=settings.max_runs)

    @property
    def rates(self) -> RatePartitions | None:
        """The rate keys (None with ``[rates] enabled = false``): seeds, partition counts, reset."""
        return self._rates

    def _grouper(self, partition: PartitionKey) -> Grouper:
        grouper = self._groupers.get(partition)
        if grouper is None:
            grouper = self._groupers[partition] = Grouper(self._cooldown_ms, self._settings.alerts.max_groups)
        self._touched.add(partition)
        return grouper

    # ----------------------------------------------------------------- a batch

    def batch(
        self,
        bundle: Bundle,
        records: Iterable[Scored],
        now: datetime,
        reject: Callable[[Scored, Exception], None],
        caught_up: Callable[[PartitionKey], bool],
    ) -> list[OutgoingRecord]:
        """The records to publish for one batch: alerts, rate alerts, summaries, changelog.

        ``records`` are the batch's scored events in offset order per partition — a partition's
        event time moves with all of them, and each counts for its pattern's rate.
        ``reject(event, exc)`` dead-letters an event whose alert could not be built.
        ``caught_up(partition)``: whether the consumer has read everything the partition holds
        (only such a partition may close windows and report silences on the wall clock)."""
        wall_ms = round(now.timestamp() * 1000)
        out: list[OutgoingRecord] = []
        seen: set[PartitionKey] = set()
        stateful = self.stateful
        for event in records:
            partition = (event.topic, event.partition)
            seen.add(partition)
            timestamp_ms = event.timestamp_ms
            at_ms = timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else wall_ms
            if stateful:
                out += self._advance(partition, at_ms, now)
            if self._rates is not None:
                out += self._count(bundle, event, partition, now, reject)
            if self._sessions is not None:
                out += self._step(bundle, event, at_ms, now)
            if event.score <= 1.0:
                continue
            pattern = pattern_id(bundle.model_id, event.prepared)
            if (self._verdicts is not None and self._verdicts.is_muted(pattern)) or (
                bundle.normal_patterns is not None and event.prepared in bundle.normal_patterns
            ):
                self._pending.muted += 1  # an operator's verdict: live, or folded into the bundle
                continue
            try:
                if self._grouping:
                    out += self._grouped(bundle, event, pattern, at_ms, now)
                else:
                    out.append(self._alert(bundle, event, pattern, now, first_seen=now, group=None))
            except Exception as exc:  # one event must not stop the batch
                reject(event, exc)
        if stateful:
            clock = time.monotonic()
            self._last_record.update(dict.fromkeys(seen, clock))
            out += self._idle(bundle, seen, wall_ms, now, caught_up)
        return out + self._changelog_records()

    def _changelog_records(self) -> list[OutgoingRecord]:
        """Every state the batch changed, to the changelog partition of its input partition."""
        out: list[OutgoingRecord] = []
        topic = self._changelog
        for partition in self._touched:
            for key, state in self._groupers[partition].changes().items():
                value = None if state is None else encode_state(state)
                out.append(OutgoingRecord(topic, encode_key(key), value, [], partition=key[1]))
        if self._rates is not None:
            out += [OutgoingRecord(topic, k, v, [], partition=p) for p, k, v in self._rates.changes()]
        if self._sessions is not None:
            out += [OutgoingRecord(topic, k, v, [], partition=p) for p, k, v in self._sessions.changes()]
        for partition in self._event_time_undo:
            clock = self._event_time.get(partition)
            value = None if clock is None else _encode_clock(clock)
            out.append(OutgoingRecord(topic, _clock_key(partition), value, [], partition=partition[1]))
        return out

    def _advance(self, partition: PartitionKey, at_ms: int, now: datetime) -> list[OutgoingRecord]:
        """One record of ``partition`` at ``at_ms``: its event time moves there (never back) and
        closes the windows it passes."""
        event_time = self._event_time.get(partition)
        if event_time is not None and at_ms <= event_time:
            return []
        self._event_time_undo.setdefault(partition, event_time)
        self._event_time[partition] = at_ms
        grouper = self._groupers.get(partition)
        if grouper is None or not len(grouper):
            return []
        due = grouper.due(at_ms)
        if not due:
            return []
        self._touched.add(partition)
        return [self._summary(s, now) for s in due]

    def _idle(
        self,
        bundle: Bundle,
        seen: set[PartitionKey],
        wall_ms: int,
        now: datetime,
        caught_up: Callable[[PartitionKey], bool],
    ) -> list[OutgoingRecord]:
        """Partitions quiet for ``IDLE_CLOSE_S`` and caught up: their windows ended by the wall
        clock close, their silences due by the wall clock are decided."""
        out: list[OutgoingRecord] = []
        clock = time.monotonic()
        for partition in set(self._groupers) | set(self._event_time):
            if partition in seen or clock - self._last_record.get(partition, clock) < IDLE_CLOSE_S:
                continue
            grouper = self._groupers.get(partition)
            pending = (
                (grouper is not None and len(grouper))
                or self._rates is not None
                or self._sessions is not None
            )
            if not pending or not caught_up(partition):
                continue
            if grouper is not None and len(grouper):
                due = grouper.due(wall_ms)
                if due:
                    self._touched.add(partition)
                    out += [self._summary(s, now) for s in due]
            if self._rates is not None:
                for decision in self._rates.advance(partition, wall_ms):
                    out += self._rate_alert(bundle, decision, None, now)
            if self._sessions is not None:
                for verdict in self._sessions.tracker(*partition).due(wall_ms):
                    out += self._session_verdict(bundle, verdict, now)
        return out

    # ----------------------------------------------------------------- sessions

    def _step(self, bundle: Bundle, event: Scored, at_ms: int, now: datetime) -> list[OutgoingRecord]:
        """``event`` as the next step of its session (or only the event time, without a key)."""
        assert self._sessions is not None
        settings = self._settings.sessions
        key = session_key(event.text, event.fields, pattern=self._session_pattern, field=settings.key_field)
        tracker = self._sessions.tracker(event.topic, event.partition)
        if (
            key is not None
            and key not in tracker
            and self._sessions.seen_elsewhere(event.topic, event.partition, key)
        ):
            self._pending.session_keys_split += 1
        code = self._session_hashes.get(event.prepared)
        if code is None:
            if len(self._session_hashes) >= 200_000:
                self._session_hashes.clear()
            code = self._session_hashes[event.prepared] = pattern_hash(event.prepared)
        out: list[OutgoingRecord] = []
        for verdict in tracker.event(key, code, timestamp_ms=at_ms, offset=event.offset, text=event.prepared):
            out += self._session_verdict(bundle, verdict, now)
        return out

    def _session_verdict(
        self, bundle: Bundle, verdict: SessionVerdict, now: datetime
    ) -> list[OutgoingRecord]:
        """Count a closed session; a verdict to alert goes through its partition's grouping under
        its signature (sessions failing the same way during an incident: one alert per cooldown)."""
        if verdict.kind == "close":
            self._pending.sessions_closed[verdict.result.reason] += 1
        if not verdict.alert:
            return []
        topic, partition = verdict.topic, verdict.partition
        session = _session_json(verdict)
        text = _session_text(session)
        top = {
            "offset": verdict.last_offset,
            "key": None,
            "timestamp_ms": verdict.last_ms,
            "text": text,
            "text_length": len(text),
            "prepared": f"session {verdict.result.signature}",
            "fields": {},
            "fields_truncated": False,
            "session": session,
        } | _model(bundle)
        group: GroupInfo | None = None
        out: list[OutgoingRecord] = []
        if self._grouping:
            grouper = self._grouper((topic, partition))
            decided = grouper.decide(
                (topic, partition, f"session:{verdict.result.signature}"),
                verdict.last_ms,
                verdict.result.score,
                top,
                alert_id=session_alert_id(topic, partition, verdict.session, verdict.first_offset),
                position={"offset": verdict.last_offset, "timestamp_ms": verdict.last_ms},
            )
            out, group = self._window(decided, verdict.result.score, now)
            if group is None:
                return out
        out.append(self._session_record(top, topic, partition, now, group=group, score=verdict.result.score))
        self._pending.session_alerts += 1
        return out

    def _session_record(
        self,
        top: dict[str, Any],
        topic: str,
        partition: int,
        now: datetime,
        *,
        group: GroupInfo | None,
        score: float,
        summary: Summary | None = None,
    ) -> OutgoingRecord:
        """The record of a session alert, or of the summary of a window of them (``summary``)."""
        session = top["session"]
        record = build_alert(
            source=AlertSource(topic, partition, int(top["offset"]), None, top.get("timestamp_ms")),
            text=str(top["text"]),
            text_length=int(top["text_length"]),
            score=score,
            threshold=1.0,
            detector="sessions",
            cluster_id=None,
            cluster_label=None,
            distance=None,
            model_id=str(top["model_id"]),
            model_sha256=str(top["model_sha256"]),
            instance_id=self._settings.instance_id,
            text_max_chars=self._settings.alerts.text_max_chars,
            source_uri=self._settings.alerts.source_uri,
            fields={},
            detected_at=now,
            prepared_text=str(top["prepared"]),
            max_bytes=self.record_max_bytes,
            pattern=PatternInfo(
                pattern_id(str(top["model_id"]), str(top["prepared"])),
                str(top["prepared"]),
                None,
                _datetime(int(session["first"]["timestamp_ms"])),
            ),
            group=group,
            summary=summary is not None,
            session=session,
            group_name=None if summary is None else summary.key[2],
        )
        self._pending.documents.append(record.document)
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))

    # ----------------------------------------------------------------- rates

    def _count(
        self,
        bundle: Bundle,
        event: Scored,
        partition: PartitionKey,
        now: datetime,
        reject: Callable[[Scored, Exception], None],
    ) -> list[OutgoingRecord]:
        """Count ``event`` for its pattern's rate; the spikes and silences that decides."""
        assert self._rates is not None

        def make_example() -> dict[str, Any]:
            return example(
                event.offset, event.key, event.timestamp_ms, event.text, event.prepared, event.fields
            )

        decisions = self._rates.observe(
            partition, self._event_time[partition], event.prepared, event.fields, make_example
        )
        out: list[OutgoingRecord] = []
        for decision in decisions:
            try:
                out += self._rate_alert(bundle, decision, event if decision.kind == "spike" else None, now)
            except Exception as exc:  # one event must not stop the batch
                reject(event, exc)
        return out

    def _rate_alert(
        self, bundle: Bundle, decision: RateDecision, event: Scored | None, now: datetime
    ) -> list[OutgoingRecord]:
        """A spike (``event``: the one that crossed the threshold) or a silence (the key's example
        event), unless muted. Both go through their partition's grouping like anomalies: a key's
        spikes one alert per cooldown, and a partition's silences one alert per cooldown (a whole
        source that stops silences every steady pattern at once: one alert, then a summary
        counting the others)."""
        assert self._rates is not None
        if event is not None:
            shown = example(
                event.offset, event.key, event.timestamp_ms, event.text, event.prepared, event.fields
            )
        else:
            kept = self._rates.example_of(decision)
            if kept is None:
                log.error(
                    "rate key %s has no example event; its %s is not published", decision.key, decision.kind
                )
                return []
            shown = kept
        pattern = pattern_id(bundle.model_id, str(shown["prepared"]))
        if self._verdicts is not None and self._verdicts.is_muted(pattern, "rate"):
            self._pending.muted += 1
            return []
        topic, partition = decision.key[0], decision.key[1]
        rate = {
            "kind": decision.kind,
            "observed": decision.observed,
            "expected": decision.expected,
            "bucket_seconds": decision.bucket_seconds,
            "bucket_start_ms": decision.bucket_start_ms,
            "buckets": decision.buckets,
            "threshold": decision.threshold,
            "score": decision.score,
            "baseline_since_ms": decision.baseline_since_ms,
            "key_fields": self._rates.key_fields(decision.key),
            "basis": decision.basis(),
        }
        group: GroupInfo | None = None
        out: list[OutgoingRecord] = []
        if self._grouping:
            grouper = self._grouper((topic, partition))
            verdict = grouper.decide(
                (topic, partition, _rate_group(decision)),
                decision.at_ms,
                decision.score,
                {**shown, "rate": rate, "known": _known(bundle, str(shown["prepared"]))} | _model(bundle),
                alert_id=rate_alert_id(decision.kind, decision.basis()),
                position={"offset": shown["offset"], "timestamp_ms": shown["timestamp_ms"]},
            )
            out, group = self._window(verdict, decision.score, now)
            if group is None:
                return out
        top = {**shown, "rate": rate, "known": _known(bundle, str(shown["prepared"]))} | _model(bundle)
        out.append(self._rate_record(top, topic, partition, now, group=group, score=decision.score))
        self._pending.rate_alerts[decision.kind] += 1
        return out

    def _rate_record(
        self,
        top: dict[str, Any],
        topic: str,
        partition: int,
        now: datetime,
        *,
        group: GroupInfo | None,
        score: float,
        summary: Summary | None = None,
    ) -> OutgoingRecord:
        """The record of a rate alert, or of the summary of a window of spikes (``summary``)."""
        rate = top["rate"]
        key = top.get("key")
        prepared = str(top["prepared"])
        record = build_alert(
            source=AlertSource(
                topic,
                partition,
                int(top["offset"]),
                None if key is None else base64.b64decode(key),
                top.get("timestamp_ms"),
            ),
            text=str(top["text"]),
            text_length=int(top["text_length"]),
            score=score,
            threshold=1.0,
            detector="rates",
            cluster_id=None,
            cluster_label=None,
            distance=None,
            model_id=str(top["model_id"]),
            model_sha256=str(top["model_sha256"]),
            instance_id=self._settings.instance_id,
            text_max_chars=self._settings.alerts.text_max_chars,
            source_uri=self._settings.alerts.source_uri,
            fields=top.get("fields") or {},
            fields_truncated=bool(top.get("fields_truncated")),
            detected_at=now,
            prepared_text=prepared,
            max_bytes=self.record_max_bytes,
            pattern=PatternInfo(
                pattern_id(str(top["model_id"]), prepared),
                prepared,
                top.get("known"),
                _datetime(int(rate["baseline_since_ms"])),
            ),
            group=group,
            summary=summary is not None,
            rate=RateInfo(
                kind=str(rate["kind"]),
                observed=int(rate["observed"]),
                expected=float(rate["expected"]),
                bucket_seconds=float(rate["bucket_seconds"]),
                bucket_start=_datetime(int(rate["bucket_start_ms"])),
                buckets=int(rate["buckets"]),
                threshold=int(rate["threshold"]),
                score=float(rate["score"]),
                baseline_since=_datetime(int(rate["baseline_since_ms"])),
                key_fields=dict(rate["key_fields"]),
            ),
            rate_basis=str(rate["basis"]),
            group_name=None if summary is None else summary.key[2],
        )
        self._pending.documents.append(record.document)
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))

    def _grouped(
        self, bundle: Bundle, event: Scored, pattern: str, at_ms: int, now: datetime
    ) -> list[OutgoingRecord]:
        grouper = self._grouper((event.topic, event.partition))
        decision = grouper.decide(
            (event.topic, event.partition, pattern),
            at_ms,
            event.score,
            _top_event(bundle, event, self._settings.alerts.text_max_chars),
            alert_id=alert_id(event.topic, event.partition, event.offset),
            position={"offset": event.offset, "timestamp_ms": event.timestamp_ms},
        )
        out, window = self._window(decision, event.score, now)
        if window is None:
            return out
        first_seen = _datetime(decision.first_seen_ms)
        out.append(self._alert(bundle, event, pattern, now, first_seen=first_seen, group=window))
        return out

    def _window(
        self, decision: Decision, score: float, now: datetime
    ) -> tuple[list[OutgoingRecord], GroupInfo | None]:
        """What a grouping decision publishes besides the alert: the summaries of the windows it
        closed, and the alert's window (None: suppressed in an open window, and counted)."""
        out = [self._summary(s, now) for s in decision.summaries]
        if not decision.publish:
            self._pending.suppressed += 1
            return out, None
        start = _datetime(decision.window_start_ms)
        return out, GroupInfo(self._cooldown_s, start, start + timedelta(seconds=self._cooldown_s), 0, score)

    def committed(self) -> list[dict[str, Any]]:
        """The batch committed: count it; returns the published alert documents (for Alertmanager)."""
        pending, self._pending = self._pending, _Pending()
        for partition in self._touched:
            self._groupers[partition].commit()
        self._touched = set()
        self._event_time_undo = {}
        if self._rates is not None:
            self._rates.committed()
        if self._sessions is not None:
            self._sessions.commit()
            self._metrics.session_alerts.inc(pending.session_alerts)
            self._metrics.session_keys_split.inc(pending.session_keys_split)
            for reason, count in pending.sessions_closed.items():
                self._metrics.sessions_closed.labels(reason=reason).inc(count)
        self._metrics.alerts_published.inc(len(pending.documents))
        self._metrics.alert_summaries.inc(pending.summaries)
        self._metrics.alerts_suppressed.inc(pending.suppressed)
        self._metrics.alerts_muted.inc(pending.muted)
        for kind, count in pending.rate_alerts.items():
            self._metrics.rate_alerts.labels(kind=kind).inc(count)
        self._count_states()
        return pending.documents

    def aborted(self) -> None:
        """The batch was aborted (and will be redelivered): undo its grouping and rate decisions
        and the event time its records moved, so the redelivered records are decided exactly alike."""
        self._pending = _Pending()
        for partition in self._touched:
            self._groupers[partition].rollback()
        self._touched = set()
        if self._rates is not None:
            self._rates.aborted()
        if self._sessions is not None:
            self._sessions.rollback()
        for partition, before in self._event_time_undo.items():
            if before is None:
                self._event_time.pop(partition, None)
            else:
                self._event_time[partition] = before
        self._event_time_undo = {}

    def _count_states(self, force: bool = False) -> None:
        """The open-window and rate-key gauges (a scan of the states: every few seconds only)."""
        clock = time.monotonic()
        if force or clock - self._open_counted_at >= OPEN_WINDOWS_EVERY_S:
            self._open_counted_at = clock
            self._metrics.alert_groups_open.set(sum(g.open_windows() for g in self._groupers.values()))
            self._metrics.rate_keys.set(0 if self._rates is None else len(self._rates))
            self._metrics.sessions_open.set(0 if self._sessions is None else self._sessions.open_sessions())

    # ----------------------------------------------------------------- assignment

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        """Partitions given up: their state now belongs to their next owner."""
        partitions = list(partitions)
        for partition in partitions:
            self._groupers.pop(partition, None)
            self._event_time.pop(partition, None)
            self._last_record.pop(partition, None)
        if self._rates is not None:
            self._rates.forget(partitions)
        if self._sessions is not None:
            for topic, number in partitions:
                self._sessions.drop_partition(topic, number)
        self._count_states(force=True)

    def restore(self, partitions: set[PartitionKey], read: Callable[[list[int]], Iterator[Message]]) -> int:
        """Load the state of newly assigned ``partitions`` from the changelog (``read`` yields the
        changelog partitions' records in order): grouping windows, rate keys and each partition's
        event time; returns the records applied. A record that does not decode is skipped with a
        warning."""
        if not self.stateful or not partitions:
            return 0
        self.forget(partitions)
        groupers = {p: Grouper(self._cooldown_ms, self._settings.alerts.max_groups) for p in partitions}
        trackers = {} if self._rates is None else self._rates.restore(partitions)
        clocks: dict[PartitionKey, int] = {}
        sessions: list[tuple[bytes, bytes | None]] = []
        restored = 0
        for msg in read(sorted({p for _, p in partitions})):
            raw_key, value = msg.key() or b"", msg.value()
            try:
                kind = _record_kind(raw_key)
                if kind == "group":
                    key = decode_key(raw_key)
                    grouper = groupers.get((key[0], key[1]))
                    if grouper is None:
                        continue  # another input topic with the same partition number, not ours
                    grouper.restore(key, None if value is None else decode_state(value))
                elif kind == "rate":
                    rate_key, state = RatePartitions.decode(raw_key, value)
                    tracker = trackers.get((rate_key[0], rate_key[1]))
                    if tracker is None:
                        continue  # not ours, or [rates] enabled = false now
                    tracker.restore(rate_key, state)
                elif kind == "clock":
                    partition = _decode_clock_key(raw_key)
                    if partition in groupers:
                        if value is None:
                            clocks.pop(partition, None)
                        else:
                            clocks[partition] = _decode_clock(value)
                elif kind in ("session", "session_clock") and self._sessions is not None:
                    sessions.append((raw_key, value))  # decoded by the session trackers below
                    continue
                else:
                    continue  # a kind of state this agent does not keep (sessions with it off)
                restored += 1
            except ValueError as exc:
                log.warning(
                    "state changelog %s[%s] offset %s skipped: %s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    exc,
                )
        clock = time.monotonic()
        for partition, grouper in groupers.items():
            self._groupers[partition] = grouper
            self._last_record[partition] = clock  # its records may be on their way: not idle yet
        self._event_time.update(clocks)
        if self._sessions is not None:
            restored += self._sessions.restore(sessions, partitions)
        self._count_states(force=True)
        return restored

    # ----------------------------------------------------------------- records

    def _alert(
        self,
        bundle: Bundle,
        event: Scored,
        pattern: str,
        now: datetime,
        *,
        first_seen: datetime,
        group: GroupInfo | None,
    ) -> OutgoingRecord:
        result = event.result
        labels = bundle.detector.cluster_labels
        record = build_alert(
            source=AlertSource(event.topic, event.partition, event.offset, event.key, event.timestamp_ms),
            text=event.text,
            score=event.score,
            threshold=1.0,
            detector=bundle.detector_name,
            cluster_id=result.cluster,
            cluster_label=_label(labels, result.cluster),
            distance=result.distance,
            model_id=bundle.model_id,
            model_sha256=bundle.sha256,
            instance_id=self._settings.instance_id,
            text_max_chars=self._settings.alerts.text_max_chars,
            source_uri=self._settings.alerts.source_uri,
            fields=event.fields,
            detected_at=now,
            prepared_text=event.prepared,
            raw_threshold=_raw_threshold(result.distance, result.score),
            max_bytes=self.record_max_bytes,
            pattern=PatternInfo(pattern, event.prepared, result.known, first_seen),
            neighbours=result.neighbours,
            group=group,
            value=event.value,
        )
        self._pending.documents.append(record.document)
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))

    def _summary(self, summary: Summary, now: datetime) -> OutgoingRecord:
        top = summary.top_event
        topic, partition, pattern = summary.key
        group = GroupInfo(
            self._cooldown_s,
            _datetime(summary.window_start_ms),
            _datetime(summary.window_end_ms),
            summary.suppressed,
            summary.max_score,
            first=_position(summary.first_suppressed),
            last=_position(summary.last_suppressed),
        )
        score = summary.max_score
        if "session" in top:  # a window of sessions that failed alike
            self._pending.summaries += 1
            return self._session_record(top, topic, partition, now, group=group, score=score, summary=summary)
        if "rate" in top:  # a window of spikes
            self._pending.summaries += 1
            return self._rate_record(top, topic, partition, now, group=group, score=score, summary=summary)
        key = top.get("key")
        record = build_alert(
            source=AlertSource(
                topic,
                partition,
                int(top["offset"]),
                None if key is None else base64.b64decode(key),
                top.get("timestamp_ms"),
            ),
            text=str(top["text"]),
            text_length=int(top["text_length"]),
            score=summary.max_score,
            threshold=1.0,
            detector=str(top["detector"]),
            cluster_id=int(top["cluster"]),
            cluster_label=top.get("cluster_label"),
            distance=float(top["distance"]),
            model_id=str(top["model_id"]),
            model_sha256=str(top["model_sha256"]),
            instance_id=self._settings.instance_id,
            text_max_chars=self._settings.alerts.text_max_chars,
            source_uri=self._settings.alerts.source_uri,
            fields=top.get("fields") or {},
            fields_truncated=bool(top.get("fields_truncated")),
            detected_at=now,
            prepared_text=str(top["prepared"]),
            raw_threshold=top["raw_threshold"]
            if "raw_threshold" in top
            else _raw_threshold(float(top["distance"]), summary.max_score),
            max_bytes=self.record_max_bytes,
            pattern=PatternInfo(
                pattern, str(top["prepared"]), top.get("known"), _datetime(summary.first_seen_ms)
            ),
            neighbours=[(str(t), float(s)) for t, s in top.get("neighbours", [])],
            group=group,
            summary=True,
            value=top.get("value"),
        )
        self._pending.documents.append(record.document)
        self._pending.summaries += 1
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))


def _top_event(bundle: Bundle, event: Scored, text_max_chars: int) -> dict[str, Any]:
    """What a summary needs of a suppressed event, JSON-able and bounded (kept in the state)."""
    fields = json_safe(event.fields)
    truncated = len(repr(fields)) > TOP_EVENT_FIELDS_MAX_BYTES
    result = event.result
    return {
        "offset": event.offset,
        "key": None if event.key is None else base64.b64encode(event.key).decode("ascii"),
        "timestamp_ms": event.timestamp_ms,
        "text": event.text[:text_max_chars],
        "text_length": len(event.text),
        "prepared": event.prepared[:text_max_chars],
        "fields": {} if truncated else fields,
        "fields_truncated": truncated,
        "distance": result.distance if math.isfinite(result.distance) else 0.0,
        "cluster": result.cluster,
        "cluster_label": _label(bundle.detector.cluster_labels, result.cluster),
        "known": result.known,
        "neighbours": [[t, s] for t, s in result.neighbours],
        "detector": bundle.detector_name,
        "model_id": bundle.model_id,
        "model_sha256": bundle.sha256,
        "raw_threshold": _raw_threshold(result.distance, result.score),
        "value": event.value,
    }


def _label(labels: list[str] | None, cluster: int) -> str | None:
    return labels[cluster] if labels is not None and 0 <= cluster < len(labels) else None


def _raw_threshold(distance: float, score: float) -> float | None:
    return distance / score if score > 0 and math.isfinite(score) and math.isfinite(distance) else None


def _position(where: dict[str, Any] | None) -> tuple[int, int | None] | None:
    if where is None:
        return None
    timestamp = where.get("timestamp_ms")
    return int(where["offset"]), None if timestamp is None else int(timestamp)


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _session_json(verdict: SessionVerdict) -> dict[str, Any]:
    """The alert's ``session``: the verdict without what the alert says elsewhere."""
    doc = verdict.to_dict()
    session = {
        "key": doc["session"],
        "events": doc["events"],
        "first": doc["first"],
        "last": doc["last"],
        "reason": doc["reason"],
        "decisive": doc["decisive"],
        "signature": doc["signature"],
        "evidence": doc["evidence"],
        "unexpected": doc["unexpected"],
        "sequence": doc["sequence"],
        "sequence_omitted": doc["sequence_omitted"],
    }
    return session


def _session_text(session: dict[str, Any]) -> str:
    """What a person reads first: which session, how long, how it went wrong."""
    steps = session["unexpected"]
    first = steps[0] if steps else None
    how = "decided at a step" if session["decisive"] else f"closed ({session['reason']})"
    what = ""
    if first is not None:
        shown = first.get("template", first["pattern"])
        expected = first.get("expected_template", first["expected"])
        if first["kind"] == "end":
            what = f"; it ended after step {first['position']} where {expected!r} was expected"
        else:
            what = f"; step {first['position'] + 1} was {shown!r} where {expected!r} was expected"
    return f"session {session['key']}: {session['events']} events, {how}{what}"


def _example(event: Scored) -> dict[str, Any]:
    return example(event.offset, event.key, event.timestamp_ms, event.text, event.prepared, event.fields)


def _model(bundle: Bundle) -> dict[str, str]:
    return {"model_id": bundle.model_id, "model_sha256": bundle.sha256}


def _known(bundle: Bundle, prepared: str) -> bool | None:
    """Whether training saw the pattern (None when the bundle does not record it)."""
    return None if bundle.known_patterns is None else prepared in bundle.known_patterns


def _rate_group(decision: RateDecision) -> str:
    """The grouping key of rate alerts: a key's spikes ``spike:<template id>[:<hash of field
    values>]`` (a window of spikes is not the pattern's window of anomalies); a partition's
    silences ``silence``, all in one window."""
    if decision.kind == "silence":
        return "silence"
    _, _, template, values = decision.key
    if not values:
        return f"spike:{template}"
    digest = hashlib.sha256(json.dumps(list(values)).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"spike:{template}:{digest}"


# --------------------------------------------------------------------- changelog: kinds and clocks


def _record_kind(raw_key: bytes) -> str:
    """What a changelog record holds: grouping keys are JSON arrays, the others JSON objects
    naming their ``kind`` ("rate", "clock", "session")."""
    if raw_key[:1] == b"[":
        return "group"
    if raw_key[:1] != b"{":
        raise ValueError("state changelog key: neither a grouping array nor a keyed object")
    try:
        doc = json.loads(raw_key.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"state changelog key: not JSON ({exc})") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if not isinstance(kind, str):
        raise ValueError("state changelog key: an object without a kind")
    return kind


def _clock_key(partition: PartitionKey) -> bytes:
    """The changelog key of an input partition's event time:
    ``{"kind":"clock","partition":<p>,"topic":"<topic>"}`` (compact, sorted keys)."""
    topic, number = partition
    return json.dumps(
        {"kind": "clock", "partition": number, "topic": topic}, separators=(",", ":"), sort_keys=True
    ).encode("ascii")


def _decode_clock_key(raw_key: bytes) -> PartitionKey:
    doc = json.loads(raw_key.decode("utf-8"))
    topic, number = doc.get("topic"), doc.get("partition")
    if not isinstance(topic, str) or isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError("clock changelog key: topic must be a string and partition an int >= 0")
    partition = (topic, number)
    if _clock_key(partition) != raw_key:
        raise ValueError("clock changelog key: not in canonical form")
    return partition


def _encode_clock(event_time_ms: int) -> bytes:
    return json.dumps({"v": CLOCK_VERSION, "event_time_ms": event_time_ms}, separators=(",", ":")).encode()


def _decode_clock(value: bytes) -> int:
    try:
        doc = json.loads(bytes(value).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"clock changelog state: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("v") != CLOCK_VERSION:
        raise ValueError(f"clock changelog state: expected version {CLOCK_VERSION}")
    event_time = doc.get("event_time_ms")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise ValueError("clock changelog state: event_time_ms must be an integer")
    return event_time
