"""The agent's data path: consume → decode → prepare → patterns → embed → score → group → publish.

One ``Pipeline`` owns one consumer (``agent.kafka.source``, a member of ``kafka.group_id``) and one
committer (``agent.kafka.delivery``: exactly-once transactions or at-least-once). Each loop iteration
polls a micro-batch (at most ``batch.max_size`` records, at most ``batch.max_wait_ms``), scores
each distinct pattern once (``agent.model.patterns``), decides which anomalous events become alerts
(``agent.alerts.alerting``: feedback verdicts, one alert per pattern and cooldown window, summaries),
turns them into alert, summary, changelog and dead-letter records, and commits the batch —
outputs, grouping state *and* input offsets — before it polls again. Reading
``Pipeline._process`` top to bottom is the whole data path; how records and offsets reach Kafka,
and how failures are retried, aborted and rewound, is the committer's business, and every
blocking Kafka call runs under a deadline (``agent.kafka.calls``).

No record can stop the loop: whatever a record holds, it is scored or dead-lettered with a
reason. An unexpected exception while decoding, preparing, embedding or building the copy of one
record dead-letters that record (``internal_error``, the exception's type and the stage in
``dlq.detail``) instead of ending the process, and every outgoing record is cut down to what the
producer and the topic accept (``exporters.dead_letters``, ``exporters.alerts``).

Model hot reload: ``offer_model`` (any thread) hands over a loaded, verified model; the loop
swaps it in between two batches, so every event is scored by exactly one model.

Broker outage: see ``agent.kafka.outage``. Readiness follows; after
``lifecycle.broker_unavailable_exit_seconds`` of continuous outage ``run`` raises
``BrokerUnavailableError`` (0 = retry forever).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, Message

from agent.alerts.alerting import Alerting, Scored
from agent.alerts.feedback import Verdicts
from agent.alerts.verdicts import VerdictReader
from agent.config import DEAD_LETTER_HEADROOM_BYTES, ConfigError, Delivery, Settings
from agent.decode import DeadLetterReason, DecodedEvent, Rejected, decode_event
from agent.health import HealthState
from agent.kafka.calls import CALL_TIMEOUT_S, kafka_error
from agent.kafka.changelog import ensure_changelog_topic, read_partitions
from agent.kafka.clients import overridden_keys
from agent.kafka.delivery import (
    Committer,
    OutgoingRecord,
    committer_class,
    inspect_output_topics,
    record_max_bytes,
)
from agent.kafka.outage import BrokerUnavailableError, BrokerWatch
from agent.kafka.permissions import Permissions
from agent.kafka.source import Batch, InputSource, RewindError, message_offset, partition_key
from agent.model.bundle import Bundle, BundleError, load_bundle
from agent.model.embedder import Embedder, EmbedderError
from agent.model.patterns import AlertContext, PatternScore, PatternTable, event_score, score_patterns
from agent.model.textprep import SlotValues
from exporters.alertmanager import AlertmanagerSink
from exporters.dead_letters import OriginalHeaders, build_dead_letter, dead_letter_headers, read_headers
from exporters.metrics import AgentMetrics, LookupResult, Stage

__all__ = [
    "PROBE_TEXT",
    "ActiveModel",
    "BrokerUnavailableError",
    "Pipeline",
    "PipelineError",
    "RunStats",
    "load_model",
]

log = logging.getLogger(__name__)

PROBE_TEXT = "anomaly-agent model check 42"
# Closing the clients at shutdown: at most this long each (the grace period bounds it too).
CLOSE_TIMEOUT_S = 5.0


class PipelineError(Exception):
    """A Kafka state the loop cannot recover from in-process (the consumer hit a fatal error, or a
    rewind failed). Nothing uncommitted was acknowledged: a restart resumes from the committed offsets."""


class _Stopping(Exception):
    """Raised inside waits for Kafka when a stop was requested and the grace period is used up."""


@dataclass(frozen=True)
class ActiveModel:
    """A verified bundle and the embedder loaded from it: everything that scores one batch."""

    bundle: Bundle
    embedder: Embedder


def load_model(path: Path, *, intra_op_threads: int = 0) -> ActiveModel:
    """Load and verify a bundle (hashes, detector) and its embedder, then score one probe text.

    The probe proves the embedder's output fits the detector (same dimension, finite scores)
    before the model is used; every failure is a ``BundleError`` naming the bundle and the cause.
    """
    bundle = load_bundle(path)
    try:
        embedder = bundle.load_embedder(intra_op_threads=intra_op_threads)
        model = ActiveModel(bundle=bundle, embedder=embedder)
        _probe(model)
    except (EmbedderError, ValueError, RuntimeError, OSError) as exc:
        raise BundleError(f"model bundle {path}: the model does not load or score ({exc})") from None
    return model


def _probe(model: ActiveModel) -> None:
    """Score ``PROBE_TEXT``; ValueError when the detector does not fit the embedder."""
    probe = [model.bundle.text_prep.prepare(PROBE_TEXT)]
    vectors = model.embedder.embed(probe)
    scores = model.bundle.detector.score(vectors, probe)
    if (
        vectors.shape != (1, model.embedder.dim)
        or scores.score.shape != (1,)
        or not np.isfinite(scores.score).all()
    ):
        raise ValueError(
            f"a probe text scored {scores.score!r} from vectors of shape {vectors.shape}; "
            "the detector does not fit the embedder, re-train the bundle"
        )


@dataclass
class RunStats:
    """What one ``Pipeline.run`` call committed (records counted once, after their batch committed)."""

    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    batches: int = 0
    aborted_batches: int = 0


@dataclass(frozen=True)
class _Event:
    """A decoded record on its way to scoring."""

    msg: Message
    event: DecodedEvent
    prepared: str
    slots: SlotValues | None  # what masking replaced (with a value view in the bundle)


class Pipeline:
    """The consume→score→publish loop of one agent instance. Not thread-safe, except
    ``request_stop`` and ``offer_model``, which may be called from signal handlers / other threads.

    ``on_iteration`` is called after every loop iteration and while waiting for a blocking Kafka
    call (the runner sends READY=1 from it); ``health`` and ``metrics`` are updated as the loop
    goes: its progress stamp moves at every iteration, after each stage of a batch and each
    embedder micro-batch, and while a Kafka call is awaited (the systemd watchdog follows it).
    Use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        settings: Settings,
        model: ActiveModel,
        *,
        metrics: AgentMetrics | None = None,
        health: HealthState | None = None,
        on_iteration: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._model = model
        self._metrics = (
            metrics if metrics is not None else AgentMetrics(batch_max_size=settings.batch.max_size)
        )
        self._health = health if health is not None else HealthState(settings.health.stall_seconds)
        self._on_iteration = on_iteration
        self._kafka_log = logging.getLogger("librdkafka")
        self._watch = BrokerWatch(
            settings.kafka.bootstrap_servers,
            settings.lifecycle.broker_unavailable_exit_seconds,
            self._health,
            Permissions(settings),
        )
        self._source = InputSource(
            settings,
            watch=self._watch,
            health=self._health,
            metrics=self._metrics,
            tick=self._waiting,
            kafka_log=self._kafka_log,
        )
        self._committer: Committer | None = None
        self._record_max_bytes = 0
        self._patterns = self._new_patterns(model)
        self._failed_partitions: set[tuple[str, int]] = set()
        verdicts = Verdicts() if settings.topics.feedback is not None else None
        self._verdicts = (
            None
            if verdicts is None
            else VerdictReader(settings, verdicts, metrics=self._metrics, kafka_log=self._kafka_log)
        )
        self._alerting = Alerting(settings, metrics=self._metrics, verdicts=verdicts)
        self._alertmanager = (
            AlertmanagerSink(
                settings.alertmanager.url,
                label_fields=settings.alertmanager.label_fields,
                alertname=settings.alertmanager.alertname,
                alertnames=settings.alertmanager.alertnames,
                cooldown_seconds=settings.alerts.cooldown_seconds,
                queue_size=settings.alertmanager.queue_size,
                timeout_s=settings.alertmanager.timeout_seconds,
                metrics=self._metrics,
            )
            if settings.alertmanager.url
            else None
        )

        self._stop_requested = False
        self._stop_deadline: float | None = None
        self._lock = threading.Lock()
        self._offered: ActiveModel | None = None

        self._metrics.set_model(
            model.bundle.model_id,
            model.bundle.sha256,
            model.bundle.detector_name,
            created_at=model.bundle.manifest.get("created_at"),
        )
        self._health.set_model_loaded(True)

    # ----------------------------------------------------------------- control (any thread)

    @property
    def model(self) -> ActiveModel:
        return self._model

    @property
    def patterns(self) -> PatternTable | None:
        """The current model's pattern table (None with ``patterns.enabled = false``)."""
        return self._patterns

    @property
    def exactly_once(self) -> bool:
        return self._settings.delivery is Delivery.EXACTLY_ONCE

    def request_stop(self) -> None:
        """Stop after the in-flight batch; give up waiting for Kafka after 80 % of the shutdown
        grace period. Safe to call from a signal handler or another thread: it only sets attributes.
        """
        if not self._stop_requested:
            self._stop_deadline = time.monotonic() + self._settings.lifecycle.shutdown_grace_seconds * 0.8
            self._stop_requested = True

    def offer_model(self, model: ActiveModel) -> None:
        """Hand over a loaded, verified model; the loop swaps it in before its next batch."""
        with self._lock:
            self._offered = model

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Check the output topics, create the clients, join the group. Idempotent.

        Raises ConfigError when an output topic does not exist (the agent would otherwise block
        on every batch), BrokerUnavailableError per the outage policy.
        """
        if self._committer is not None:
            return
        settings = self._settings
        for key in overridden_keys(settings):
            log.warning(
                "kafka.librdkafka[%r] is ignored: the agent sets it to keep its delivery guarantees", key
            )
        self._alerting.use_session_model(self._model.bundle.sessions)  # ConfigError: no or another model
        if self._alerting.stateful:
            inputs = ensure_changelog_topic(settings, self._watch, self._waiting, self._kafka_log)
            if self._alerting.rates is not None:
                self._alerting.rates.set_partition_counts(inputs)
                self._use_rate_seeds(self._model)
        topics = inspect_output_topics(settings, self._watch, self._waiting, self._kafka_log)
        self._record_max_bytes = record_max_bytes(settings, topics)
        self._alerting.record_max_bytes = self._record_max_bytes
        if self._verdicts is not None:
            self._verdicts.start(self._waiting)  # verdicts apply from the first batch on
        if self._alertmanager is not None:
            self._alertmanager.start()
        dead_letter_limit = topics.max_message_bytes[settings.topics.dead_letter]
        if settings.events.max_bytes + DEAD_LETTER_HEADROOM_BYTES > dead_letter_limit:
            log.warning(
                "topic %s accepts records up to %d bytes (max.message.bytes), less than events.max_bytes "
                "(%d) plus headroom: the largest accepted records are dead-lettered cut down",
                settings.topics.dead_letter,
                dead_letter_limit,
                settings.events.max_bytes,
            )
        committer = committer_class(settings.delivery)(
            settings,
            self._source,
            topics,
            watch=self._watch,
            metrics=self._metrics,
            tick=self._waiting,
            call_timeout=self._call_timeout,
            stopping=lambda: self._stop_requested,
            kafka_log=self._kafka_log,
        )
        committer.start()
        self._committer = committer
        self._source.start()
        log.info(
            "started delivery=%s group=%s static_membership=%s input=%s alerts=%s dead_letter=%s "
            "model=%s sha256=%s",
            settings.delivery.value,
            settings.kafka.group_id,
            settings.static_membership(),
            ",".join(settings.topics.input),
            settings.topics.alerts,
            settings.topics.dead_letter,
            self._model.bundle.model_id,
            self._model.bundle.sha256[:12],
        )

    def close(self) -> None:
        """Abort an open transaction (only possible after an error mid-batch), flush, leave the
        group; each within ``CLOSE_TIMEOUT_S`` (and the grace period). Commits nothing: every
        committed batch already is."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.close(self._close_timeout())
        self._source.close(self._close_timeout())
        if self._verdicts is not None:
            self._verdicts.close(self._close_timeout())
        if self._alertmanager is not None:
            self._alertmanager.close(self._close_timeout())
        log.info("closed the Kafka clients")

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- the loop

    def run(self, max_messages: int | None = None, idle_timeout_s: float | None = None) -> RunStats:
        """Process batches until a stop is requested, ``max_messages`` records were committed, or
        no record arrived for ``idle_timeout_s`` seconds; returns what this call committed.

        May be called again after it returns (the group membership is kept until ``close``).
        Raises BrokerUnavailableError per the outage policy, ConfigError for missing output
        topics, PipelineError for unrecoverable client states, ``agent.kafka.calls.CallHung`` /
        ``ClientsExhausted`` when a consumer call hung or replaced producers keep hanging.
        """
        stats = RunStats()
        try:
            self.start()
            idle_since = time.monotonic()
            while not self._stop_requested:
                self._swap_in_offered_model()
                self._watch.check()
                if self._source.fatal_error is not None:
                    raise PipelineError(f"the consumer hit a fatal error: {self._source.fatal_error}")
                limit = self._settings.batch.max_size
                if max_messages is not None:
                    limit = min(limit, max_messages - stats.consumed)
                    if limit <= 0:
                        break
                batch = self._source.poll(
                    limit, self._settings.batch.max_wait_ms / 1000, lambda: self._stop_requested
                )
                self._follow_assignment()
                if batch.messages:
                    self._health.work_pending()
                    self._process(batch, stats)
                    idle_since = time.monotonic()
                else:
                    # Nothing polled: nothing pending — unless a failed batch was rewound and its
                    # partitions are still ours (the poll right after a seek is often empty).
                    if not self._failed_partitions & self._source.assigned:
                        self._failed_partitions = set()
                        self._health.work_idle()
                    if self._alerting.stateful:
                        self._process(batch, stats)  # windows that ended, silences: on the wall clock
                    if idle_timeout_s is not None and time.monotonic() - idle_since >= idle_timeout_s:
                        break
                self._iteration_done()
        except _Stopping:
            log.warning("shutdown grace period used up while Kafka was not answering; giving up the batch")
        except RewindError as exc:
            raise PipelineError(str(exc)) from exc
        return stats

    def _process(self, batch: Batch, stats: RunStats) -> None:
        """One batch, top to bottom: decode, prepare, embed, score, build records, publish+commit."""
        model = self._model
        settings = self._settings
        outgoing: list[OutgoingRecord] = []
        rejected: list[DeadLetterReason] = []

        def reject(msg: Message, reason: DeadLetterReason, detail: str) -> None:
            if reason is DeadLetterReason.INTERNAL_ERROR:
                log.warning(
                    "record %s[%d] offset %d dead-lettered as internal_error: %s",
                    *partition_key(msg),
                    message_offset(msg),
                    detail,
                    exc_info=sys.exc_info()[0] is not None,  # the traceback, where there is one
                )
            rejected.append(reason)
            outgoing.append(self._dead_letter(msg, reason, detail))

        with self._metrics.timed(Stage.DECODE):
            decoded: list[tuple[Message, DecodedEvent]] = []
            for msg in batch.messages:
                try:
                    result = decode_event(
                        msg.value(),
                        format=settings.events.format,
                        text_field=settings.events.text_field,
                        max_bytes=settings.events.max_bytes,
                        timestamp_ms=msg.timestamp()[1],
                    )
                except Exception as exc:  # one record must not stop the partition
                    reject(msg, DeadLetterReason.INTERNAL_ERROR, _internal("decoding", exc))
                    continue
                if isinstance(result, Rejected):
                    reject(msg, result.reason, result.detail)
                else:
                    decoded.append((msg, result))
        self._health.progress()

        with self._metrics.timed(Stage.EMBED):
            events: list[_Event] = []
            # A raw text repeated in the batch is prepared once; with a value view the values
            # masking replaced come out too (scored per event beside the pattern).
            prepared: dict[str, tuple[str, SlotValues | None]] = {}
            text_prep, with_values = model.bundle.text_prep, model.bundle.values is not None
            for msg, event in decoded:
                try:
                    done = prepared.get(event.text)
                    if done is None:
                        done = prepared[event.text] = (
                            text_prep.prepare_values(event.text)
                            if with_values
                            else (text_prep.prepare(event.text), None)
                        )
                    events.append(_Event(msg, event, done[0], done[1]))
                except Exception as exc:
                    reject(msg, DeadLetterReason.INTERNAL_ERROR, _internal("preparing the text", exc))
            results = self._score(model, events, reject)

        scored: list[float] = []
        timestamps: list[int | None] = []
        with self._metrics.timed(Stage.SCORE):
            # Every scored event in offset order: each moves its partition's event time and counts
            # for its pattern's rate (rates / group); the anomalous ones (> 1.0) may alert.
            in_order: list[Scored] = []
            for item, outcome in zip(events, results, strict=True):
                if outcome is None:
                    continue
                score, finding = event_score(outcome, item.slots)  # the pattern's, with its values
                scored.append(score)
                timestamps.append(item.event.timestamp_ms)
                in_order.append(_scored(item, outcome, score, None if finding is None else finding.to_dict()))

            def not_built(event: Scored, exc: Exception) -> None:
                msg = next(
                    e.msg
                    for e in events
                    if partition_key(e.msg) == (event.topic, event.partition)
                    and message_offset(e.msg) == event.offset
                )
                reject(msg, DeadLetterReason.INTERNAL_ERROR, _internal("building the alert", exc))

            outgoing += self._alerting.batch(
                model.bundle, in_order, datetime.now(UTC), not_built, self._source.caught_up
            )
        self._health.progress()

        if not batch.messages and not outgoing:
            return  # idle, no window ended: nothing to commit
        assert self._committer is not None
        if not self._committer.commit(batch, outgoing):
            stats.aborted_batches += 1
            self._alerting.aborted()
            self._failed_partitions = set(batch.first)
            return

        self._failed_partitions = set()
        published = self._alerting.committed()
        if self._alertmanager is not None and published:
            self._alertmanager.submit(published)
        if not batch.messages:
            return
        self._health.work_committed()
        self._metrics.observe_batch(scored, timestamps)
        for reason in rejected:
            self._metrics.dead_lettered(reason)
        stats.consumed += len(batch.messages)
        stats.processed += len(scored)
        stats.dead_lettered += len(rejected)
        stats.alerts += len(published)
        stats.batches += 1
        log.debug(
            "batch committed records=%d scored=%d alerts=%d dead_lettered=%d",
            len(batch.messages),
            len(scored),
            len(published),
            len(rejected),
        )

    def _score(
        self,
        model: ActiveModel,
        events: list[_Event],
        reject: Callable[[Message, DeadLetterReason, str], None],
    ) -> list[PatternScore | None]:
        """Scores of the events' patterns (``agent.model.patterns``), each distinct unknown one embedded
        and scored once. A pattern that fails alone dead-letters its events (None). If every event
        fails and so does the probe text, the model itself is broken: that is raised, not blamed
        on the records."""
        failed: dict[str, Exception] = {}
        table = self._patterns
        before = (table.hits, table.misses, table.evictions) if table is not None else (0, 0, 0)
        results = score_patterns(
            [e.prepared for e in events],
            embedder=model.embedder,
            detector=model.bundle.detector,
            table=table,
            on_failure=failed.__setitem__,
            dedup=table is not None,  # patterns.enabled = false: every event embedded, as before
            context=AlertContext(
                model.bundle.known_patterns, model.bundle.examples, self._settings.alerts.neighbours
            ),
            progress=self._health.progress,  # busy, not stuck: the watchdog keeps pinging
            values=model.bundle.values,
        )
        if table is not None:
            self._metrics.pattern_lookups.labels(result=LookupResult.HIT.value).inc(table.hits - before[0])
            self._metrics.pattern_lookups.labels(result=LookupResult.MISS.value).inc(table.misses - before[1])
            self._metrics.pattern_evictions.inc(table.evictions - before[2])
            self._metrics.patterns.set(len(table))
        if failed:
            if all(result is None for result in results):
                try:
                    _probe(model)
                except Exception as exc:
                    raise next(iter(failed.values())) from exc
            for item, result in zip(events, results, strict=True):
                if result is None:
                    error = failed[item.prepared]
                    reject(item.msg, DeadLetterReason.INTERNAL_ERROR, _internal("scoring", error))
        return results

    def _dead_letter(self, msg: Message, reason: DeadLetterReason, detail: str) -> OutgoingRecord:
        """The record's dead-letter copy, cut down to what Kafka accepts; never raises."""
        topic, partition = partition_key(msg)
        ours = dead_letter_headers(
            reason=reason,
            detail=detail,
            topic=topic,
            partition=partition,
            offset=message_offset(msg),
            instance_id=self._settings.instance_id,
        )
        original = read_headers(msg)
        try:
            copy = build_dead_letter(
                key=msg.key(),
                value=msg.value(),
                original=original,
                ours=ours,
                max_bytes=self._record_max_bytes,
            )
        except Exception as exc:  # the last resort keeps the source coordinates, nothing else
            ours[1] = (
                "dlq.detail",
                f"{detail} (copy failed: {type(exc).__name__})".encode("utf-8", "replace"),
            )
            copy = build_dead_letter(
                key=None,
                value=None,
                original=OriginalHeaders([]),
                ours=ours,
                max_bytes=self._record_max_bytes,
            )
        return OutgoingRecord(self._settings.topics.dead_letter, copy.key, copy.value, copy.headers)

    # ----------------------------------------------------------------- assignment, waiting, stop, reload

    def _follow_assignment(self) -> None:
        """Partitions gained since the last poll get their grouping state from the changelog
        before their first batch; partitions given up forget theirs (their next owner reads it)."""
        gained, given_up = self._source.take_assignment_changes()
        self._alerting.forget(given_up)
        if gained and self._alerting.stateful:
            topic = self._settings.topics.groups_topic()
            try:
                restored = self._alerting.restore(
                    gained,
                    lambda partitions: read_partitions(
                        self._settings, topic, partitions, tick=self._waiting, kafka_log=self._kafka_log
                    ),
                )
            except (KafkaException, TimeoutError) as exc:
                error = kafka_error(exc)
                if error is not None and self._watch.refusal(error, "reading the grouping changelog", topic):
                    self._watch.check()  # raises the refusal: exit 77 naming what to grant
                raise PipelineError(
                    f"cannot restore the grouping state from {topic}: {error or exc}"
                ) from exc
            log.info("grouping state restored for %d partition(s): %d record(s)", len(gained), restored)

    def _waiting(self) -> None:
        """Runs while a blocking Kafka call is awaited: outage policy, shutdown deadline, watchdog."""
        self._watch.check()
        if (
            self._stop_requested
            and self._stop_deadline is not None
            and time.monotonic() >= self._stop_deadline
        ):
            raise _Stopping()
        self._iteration_done()

    def _call_timeout(self) -> float:
        if self._stop_deadline is None:
            return CALL_TIMEOUT_S
        return max(0.5, min(CALL_TIMEOUT_S, self._stop_deadline - time.monotonic()))

    def _close_timeout(self) -> float:
        if self._stop_deadline is None:
            return CLOSE_TIMEOUT_S
        grace_end = self._stop_deadline + self._settings.lifecycle.shutdown_grace_seconds * 0.15
        return max(0.5, min(CLOSE_TIMEOUT_S, grace_end - time.monotonic()))

    def _iteration_done(self) -> None:
        self._health.beat()
        self._metrics.ready.set(1 if self._health.ready()[0] else 0)
        if self._on_iteration is not None:
            self._on_iteration()

    def _new_patterns(self, model: ActiveModel) -> PatternTable | None:
        """A fresh pattern table for ``model`` (none with ``patterns.enabled = false``)."""
        if not self._settings.patterns.enabled:
            return None
        self._metrics.patterns.set(0)
        return PatternTable(model.bundle.sha256, self._settings.patterns.max_entries)

    def _use_rate_seeds(self, model: ActiveModel) -> None:
        rates = self._alerting.rates
        if rates is not None:
            used = rates.use_seeds(model.bundle.rate_seeds)
            if used:
                log.info("rate baselines of %d training template(s) seed new keys", used)

    def _swap_in_offered_model(self) -> None:
        with self._lock:
            offered, self._offered = self._offered, None
        if offered is None:
            return
        if self._settings.sessions.enabled:
            try:
                self._alerting.use_session_model(offered.bundle.sessions)
            except ConfigError as exc:
                log.error("reload refused, the running model stays: %s", exc)
                return
        old = self._model
        self._model = offered
        self._patterns = self._new_patterns(offered)  # nothing scored by the old model carries over
        rates = self._alerting.rates
        if rates is not None:
            if offered.bundle.text_prep != old.bundle.text_prep:
                rates.reset()  # new templates: the old ones must not all report silences
                log.info("the new bundle prepares text differently: rate baselines start again")
            self._use_rate_seeds(offered)
        bundle = offered.bundle
        self._metrics.set_model(
            bundle.model_id, bundle.sha256, bundle.detector_name, created_at=bundle.manifest.get("created_at")
        )
        log.info(
            "model swapped model=%s sha256=%s detector=%s (was model=%s sha256=%s)",
            bundle.model_id,
            bundle.sha256[:12],
            bundle.detector_name,
            old.bundle.model_id,
            old.bundle.sha256[:12],
        )


def _scored(item: _Event, result: PatternScore, score: float, value: dict[str, Any] | None) -> Scored:
    topic, partition = partition_key(item.msg)
    fields = item.event.fields
    return Scored(
        topic,
        partition,
        message_offset(item.msg),
        item.msg.key(),
        item.event.timestamp_ms,
        item.event.text,
        item.prepared,
        fields if fields is not None else {},
        result,
        score,
        value,
    )


def _internal(stage: str, exc: BaseException) -> str:
    """``dlq.detail`` of an internal error: the stage and the exception's type (and a bounded message)."""
    message = str(exc)
    if len(message) > 120:
        message = message[:119] + "…"
    return (
        f"{type(exc).__name__} while {stage}: {message}" if message else f"{type(exc).__name__} while {stage}"
    )
