"""Alerts people can act on: from a batch's anomalous events to the records it publishes.

Per batch the pipeline hands over its anomalous events (score > 1.0) and gets back the records to
produce in the batch's transaction:

1. **muted** patterns are dropped: an operator's latest verdict on the pattern is ``normal``
   (``topics.feedback``, ``agent.verdicts``);
2. with ``alerts.group_by = "pattern"`` (the default) each event is decided by the ``Grouper``
   (``agent.grouping``): the first anomalous event of a pattern on an input partition is an
   **alert** and opens a cooldown window; the next ones inside it are counted; a window that
   counted any closes with one **summary** (count, window, the highest-scoring suppressed event);
   with ``"event"`` every anomalous event is an alert, as before;
3. the grouping **changelog** records (``agent.changelog``): every state the batch changed, to the
   changelog partition of the same number as its input partition, in the same transaction — so
   the grouping state a restarted agent reads back is exactly that of its last committed batch.

``committed()`` / ``aborted()`` close the batch: counters move, and Alertmanager is handed the
committed alerts, only after the commit; an aborted batch's grouping decisions are rolled back and
taken again when the batch is redelivered. ``restore`` and ``forget`` follow the consumer's
assignment between batches.

Summaries fire on time even without traffic: ``Pipeline`` calls ``batch`` with no events while
idle, and the ended windows come out as a batch of only summaries.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message

from agent.bundle import Bundle
from agent.config import GroupBy, Settings
from agent.delivery import OutgoingRecord
from agent.feedback import Verdicts
from agent.grouping import Grouper, GroupKey, Summary, decode_key, decode_state, encode_key, encode_state
from agent.patterns import PatternScore
from agent.source import PartitionKey
from exporters.alerts import (
    AlertSource,
    GroupInfo,
    PatternInfo,
    alert_id,
    build_alert,
    json_safe,
    pattern_id,
)
from exporters.metrics import AgentMetrics

__all__ = ["Alerting", "Anomalous"]

log = logging.getLogger(__name__)

# A summary's event is kept in the grouping state (and its changelog record) until the window
# ends: its fields are kept only up to this size, so one record with huge fields cannot make the
# changelog record too large (the summary then says fields_truncated).
TOP_EVENT_FIELDS_MAX_BYTES = 8_192


@dataclass(frozen=True)
class Anomalous:
    """One anomalous event of the batch: where it came from, its text and what the model said."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    text: str
    prepared: str
    fields: dict[str, Any]
    result: PatternScore


@dataclass
class _Pending:
    """What the open batch will count and hand to Alertmanager once it commits."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    summaries: int = 0
    suppressed: int = 0
    muted: int = 0


class Alerting:
    """Decides which anomalous events become alerts and builds their records; see the module doc.
    Not thread-safe: the loop owns it (``Verdicts`` is the only shared part, and it locks)."""

    def __init__(self, settings: Settings, *, metrics: AgentMetrics, verdicts: Verdicts | None) -> None:
        alerts = settings.alerts
        self._settings = settings
        self._metrics = metrics
        self._verdicts = verdicts
        self._cooldown_s = alerts.cooldown_seconds
        self._grouper = (
            Grouper(round(alerts.cooldown_seconds * 1000), alerts.max_groups)
            if alerts.group_by is GroupBy.PATTERN
            else None
        )
        self._changelog = settings.topics.groups_topic()
        self._pending = _Pending()
        self.record_max_bytes: int | None = None

    @property
    def grouping(self) -> bool:
        return self._grouper is not None

    # ----------------------------------------------------------------- a batch

    def batch(
        self,
        bundle: Bundle,
        events: Iterable[Anomalous],
        now: datetime,
        reject: Callable[[Anomalous, Exception], None],
    ) -> list[OutgoingRecord]:
        """The records of one batch: due summaries, alerts, summaries, changelog records.
        ``reject(event, exc)`` dead-letters an event whose alert could not be built."""
        now_ms = round(now.timestamp() * 1000)
        records: list[OutgoingRecord] = []
        grouper = self._grouper
        if grouper is not None:
            records += [self._summary(s, now) for s in grouper.due(now_ms)]
        for event in events:
            pattern = pattern_id(bundle.model_id, event.prepared)
            if self._verdicts is not None and self._verdicts.is_muted(pattern):
                self._pending.muted += 1
                continue
            try:
                if grouper is None:
                    records.append(self._alert(bundle, event, pattern, now, first_seen=now, group=None))
                    continue
                key: GroupKey = (event.topic, event.partition, pattern)
                decision = grouper.decide(
                    key,
                    now_ms,
                    event.result.score,
                    _top_event(bundle, event, self._settings.alerts.text_max_chars),
                    alert_id=alert_id(event.topic, event.partition, event.offset),
                )
                records += [self._summary(s, now) for s in decision.summaries]
                if not decision.publish:
                    self._pending.suppressed += 1
                    continue
                start = _datetime(decision.window_start_ms)
                window = GroupInfo(
                    self._cooldown_s,
                    start,
                    start + timedelta(seconds=self._cooldown_s),
                    0,
                    event.result.score,
                )
                records.append(
                    self._alert(
                        bundle,
                        event,
                        pattern,
                        now,
                        first_seen=_datetime(decision.first_seen_ms),
                        group=window,
                    )
                )
            except Exception as exc:  # one event must not stop the batch
                reject(event, exc)
        if grouper is not None:
            for key, state in grouper.changes().items():
                value = None if state is None else encode_state(state)
                records.append(OutgoingRecord(self._changelog, encode_key(key), value, [], partition=key[1]))
        return records

    def committed(self) -> list[dict[str, Any]]:
        """The batch committed: count it; returns the published alert documents (for Alertmanager)."""
        pending, self._pending = self._pending, _Pending()
        if self._grouper is not None:
            self._grouper.commit()
            self._metrics.alert_groups.set(len(self._grouper))
        self._metrics.alerts_published.inc(len(pending.documents))
        self._metrics.alert_summaries.inc(pending.summaries)
        self._metrics.alerts_suppressed.inc(pending.suppressed)
        self._metrics.alerts_muted.inc(pending.muted)
        return pending.documents

    def aborted(self) -> None:
        """The batch was aborted (and will be redelivered): undo its grouping decisions."""
        self._pending = _Pending()
        if self._grouper is not None:
            self._grouper.rollback()

    # ----------------------------------------------------------------- assignment

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        """Partitions given up: their grouping state now belongs to their next owner."""
        if self._grouper is not None:
            for topic, partition in partitions:
                self._grouper.drop_partition(topic, partition)
            self._metrics.alert_groups.set(len(self._grouper))

    def restore(self, partitions: set[PartitionKey], read: Callable[[list[int]], Iterator[Message]]) -> int:
        """Load the grouping state of newly assigned ``partitions`` from the changelog (``read``
        yields the changelog partitions' records in order); returns the states restored.
        A changelog record that does not decode is skipped with a warning."""
        if self._grouper is None or not partitions:
            return 0
        self.forget(partitions)
        restored = 0
        for msg in read(sorted({p for _, p in partitions})):
            raw_key, value = msg.key(), msg.value()
            try:
                key = decode_key(raw_key or b"")
                if (key[0], key[1]) not in partitions:
                    continue  # another input topic with the same partition number, not ours
                self._grouper.restore(key, None if value is None else decode_state(value))
                restored += 1
            except ValueError as exc:
                log.warning(
                    "grouping changelog %s[%s] offset %s skipped: %s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    exc,
                )
        self._metrics.alert_groups.set(len(self._grouper))
        return restored

    # ----------------------------------------------------------------- records

    def _alert(
        self,
        bundle: Bundle,
        event: Anomalous,
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
            score=result.score,
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
        )
        self._pending.documents.append(record.document)
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))

    def _summary(self, summary: Summary, now: datetime) -> OutgoingRecord:
        top = summary.top_event
        topic, partition, pattern = summary.key
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
            raw_threshold=_raw_threshold(float(top["distance"]), summary.max_score),
            max_bytes=self.record_max_bytes,
            pattern=PatternInfo(
                pattern, str(top["prepared"]), top.get("known"), _datetime(summary.first_seen_ms)
            ),
            neighbours=[(str(t), float(s)) for t, s in top.get("neighbours", [])],
            group=GroupInfo(
                self._cooldown_s,
                _datetime(summary.window_start_ms),
                _datetime(summary.window_end_ms),
                summary.suppressed,
                summary.max_score,
            ),
            summary=True,
        )
        self._pending.documents.append(record.document)
        self._pending.summaries += 1
        return OutgoingRecord(self._settings.topics.alerts, record.key, record.value, list(record.headers))


def _top_event(bundle: Bundle, event: Anomalous, text_max_chars: int) -> dict[str, Any]:
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
        "distance": result.distance if _finite(result.distance) else 0.0,
        "cluster": result.cluster,
        "cluster_label": _label(bundle.detector.cluster_labels, result.cluster),
        "known": result.known,
        "neighbours": [[t, s] for t, s in result.neighbours],
        "detector": bundle.detector_name,
        "model_id": bundle.model_id,
        "model_sha256": bundle.sha256,
    }


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _label(labels: list[str] | None, cluster: int) -> str | None:
    return labels[cluster] if labels is not None and 0 <= cluster < len(labels) else None


def _raw_threshold(distance: float, score: float) -> float | None:
    return distance / score if score > 0 and _finite(score) and _finite(distance) else None


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
