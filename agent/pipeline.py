"""The agent's main loop: consume → decode → prepare → embed → score → publish → commit.

One ``Pipeline`` owns one consumer (a member of ``kafka.group_id``) and one producer. Each loop
iteration polls a micro-batch (at most ``batch.max_size`` records, at most ``batch.max_wait_ms``),
turns it into alert and dead-letter records, and commits the batch — outputs *and* input offsets —
before it polls again. Reading ``Pipeline._process`` top to bottom is the whole data path.

Delivery (``delivery`` setting):

exactly_once (default)
    One Kafka transaction per batch holds the alerts, the dead-letter records and the input
    offsets (``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447), so a
    ``read_committed`` reader of the alert topic sees each alert once across crashes, restarts
    and rebalances. The producer's ``transactional.id`` is stable per instance: a restarted
    instance fences its crashed predecessor and the broker aborts the predecessor's open
    transaction at once. Errors are handled the way librdkafka's transactions guide says:
    *retriable* → call again; *abortable* (``txn_requires_abort``) → ``abort_transaction`` and
    rewind the consumer to the batch's first offsets, which are the committed ones; *fatal*
    (fenced, ...) → recreate the producer and rewind.
at_least_once
    An idempotent producer; the batch's records are produced and flushed, and the input offsets
    are committed only when every delivery report came back without error. A failed delivery
    rewinds the batch. A crash between delivery and commit republishes the batch's alerts with
    the same ``id`` (derived from topic/partition/offset), so subscribers can dedupe.

Rebalances: no transaction (and no unflushed record) is ever open while ``consume`` runs, so the
revoke callback has nothing to commit or abort; it records which partitions went away, and
records of those partitions that the same poll already returned are dropped (their offsets were
not committed, so their new owner — possibly this member again, after a seek to the committed
offset — processes them). Lost partitions are treated the same way and never committed.

Model hot reload: ``offer_model`` (any thread) hands over a loaded, verified model; the loop
swaps it in between two batches, so every event is scored by exactly one model.

Broker outage: ``error_cb`` reports ``_ALL_BROKERS_DOWN``; the broker counts as reachable again
when librdkafka statistics show a broker ``UP``, a record arrives or a commit succeeds. Readiness
follows; after ``lifecycle.broker_unavailable_exit_seconds`` of continuous outage ``run`` raises
``BrokerUnavailableError`` (0 = retry forever).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from agent.bundle import Bundle, BundleError, load_bundle
from agent.config import ConfigError, Delivery, Settings
from agent.decode import DeadLetterReason, DecodedEvent, Rejected, dead_letter_headers, decode_event
from agent.detectors.base import Scores
from agent.embedder import Embedder, EmbedderError
from agent.health import HealthState
from agent.kafka_clients import consumer_config, overridden_keys, producer_config
from exporters.alerts import AlertSource, build_alert
from exporters.metrics import AgentMetrics, Stage, TransactionResult

log = logging.getLogger(__name__)

T = TypeVar("T")
PartitionKey = tuple[str, int]

# One consume() call blocks at most this long, so stop requests are seen promptly and the loop
# calls consume() far more often than max.poll.interval.ms (>= 10 s) requires.
POLL_SLICE_S = 0.5
# Upper bound of one blocking transactional / metadata call; retriable timeouts are retried.
KAFKA_CALL_TIMEOUT_S = 10.0
# Errors during start-up (metadata, init_transactions) that mean "broker not there yet".
_STARTUP_RETRY_CODES = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
PROBE_TEXT = "anomaly-agent model check 42"


class BrokerUnavailableError(Exception):
    """The brokers stayed unreachable longer than ``lifecycle.broker_unavailable_exit_seconds``."""


class PipelineError(Exception):
    """A Kafka state the loop cannot recover from in-process (the consumer hit a fatal error, or a
    rewind failed). Nothing uncommitted was acknowledged: a restart resumes from the committed offsets."""


class _Stopping(Exception):
    """Raised inside retry loops when a stop was requested and the grace period is used up."""


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
        vectors = embedder.embed([bundle.text_prep.prepare(PROBE_TEXT)])
        scores = bundle.detector.score(vectors)
    except (EmbedderError, ValueError, RuntimeError, OSError) as exc:
        raise BundleError(f"model bundle {path}: the model does not load or score ({exc})") from None
    if (
        vectors.shape != (1, embedder.dim)
        or scores.score.shape != (1,)
        or not np.isfinite(scores.score).all()
    ):
        raise BundleError(
            f"model bundle {path}: a probe text scored {scores.score!r} from vectors of shape "
            f"{vectors.shape}; the detector does not fit the embedder, re-train the bundle"
        )
    return ActiveModel(bundle=bundle, embedder=embedder)


@dataclass
class RunStats:
    """What one ``Pipeline.run`` call committed (records counted once, after their batch committed)."""

    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    batches: int = 0
    aborted_batches: int = 0


@dataclass
class _Batch:
    messages: list[Message]
    first: dict[PartitionKey, int] = field(default_factory=dict)
    next_offsets: dict[PartitionKey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for msg in self.messages:
            key, offset = _partition_key(msg), _offset(msg)
            self.first[key] = min(self.first.get(key, offset), offset)
            self.next_offsets[key] = max(self.next_offsets.get(key, 0), offset + 1)


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


def _partition_key(msg: Message) -> PartitionKey:
    topic, partition = msg.topic(), msg.partition()
    assert topic is not None and partition is not None, "consumed records always have a topic/partition"
    return topic, partition


def _offset(msg: Message) -> int:
    offset = msg.offset()
    assert offset is not None, "consumed records always have an offset"
    return offset


def _header_list(msg: Message) -> list[tuple[str, str | bytes | None]]:
    headers = msg.headers()
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else None


class Pipeline:
    """The consume→score→publish loop of one agent instance. Not thread-safe, except
    ``request_stop`` and ``offer_model``, which may be called from signal handlers / other threads.

    ``on_iteration`` is called after every loop iteration and while retrying a blocked Kafka call
    (the runner uses it for systemd watchdog pings); ``health`` and ``metrics`` are updated as
    the loop goes. Use as a context manager, or call ``close``.
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

        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._assigned: set[PartitionKey] = set()
        self._revoked_in_poll: set[PartitionKey] = set()
        self._in_transaction = False
        self._consumer_fatal: KafkaError | None = None
        self._unreachable_since: float | None = None

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
    def exactly_once(self) -> bool:
        return self._settings.delivery is Delivery.EXACTLY_ONCE

    def request_stop(self) -> None:
        """Stop after the in-flight batch; give up blocked retries after the shutdown grace period.

        Safe to call from a signal handler: it only sets attributes.
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
        """Create the clients, check the output topics exist, join the group. Idempotent.

        Raises ConfigError when an output topic does not exist (the agent would otherwise block
        on every batch), BrokerUnavailableError per the outage policy.
        """
        if self._consumer is not None:
            return
        for key in overridden_keys(self._settings):
            log.warning(
                "kafka.librdkafka[%r] is ignored: the agent sets it to keep its delivery guarantees", key
            )
        self._consumer = Consumer(
            consumer_config(
                self._settings,
                error_cb=self._on_consumer_error,
                stats_cb=self._on_stats,
                logger=self._kafka_log,
            )
        )
        self._producer = self._new_producer()
        self._check_output_topics()
        self._consumer.subscribe(
            list(self._settings.topics.input),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "started delivery=%s group=%s input=%s alerts=%s dead_letter=%s model=%s sha256=%s",
            self._settings.delivery.value,
            self._settings.kafka.group_id,
            ",".join(self._settings.topics.input),
            self._settings.topics.alerts,
            self._settings.topics.dead_letter,
            self._model.bundle.model_id,
            self._model.bundle.sha256[:12],
        )

    def close(self) -> None:
        """Leave the group and close the clients; an open transaction (only possible after an
        error mid-batch) is aborted. Commits nothing: every committed batch already is."""
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if producer is not None:
            if self._in_transaction:
                try:
                    producer.abort_transaction(self._call_timeout())
                except KafkaException as exc:
                    log.warning("aborting the open transaction at close failed: %s", _kafka_error(exc) or exc)
                self._in_transaction = False
            producer.flush(self._call_timeout())
        if consumer is not None:
            consumer.close()
        self._assigned.clear()
        self._health.set_assigned(False)
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
        topics, PipelineError for unrecoverable client states.
        """
        stats = RunStats()
        try:
            self.start()
            idle_since = time.monotonic()
            while not self._stop_requested:
                self._swap_in_offered_model()
                self._check_broker_outage()
                if self._consumer_fatal is not None:
                    raise PipelineError(f"the consumer hit a fatal error: {self._consumer_fatal}")
                limit = self._settings.batch.max_size
                if max_messages is not None:
                    limit = min(limit, max_messages - stats.consumed)
                    if limit <= 0:
                        break
                batch = self._poll(limit)
                if batch.messages:
                    self._process(batch, stats)
                    idle_since = time.monotonic()
                elif idle_timeout_s is not None and time.monotonic() - idle_since >= idle_timeout_s:
                    break
                self._iteration_done()
        except _Stopping:
            log.warning("shutdown grace period used up while Kafka was not answering; giving up the batch")
        return stats

    def _poll(self, limit: int) -> _Batch:
        """Up to ``limit`` records within ``batch.max_wait_ms``, minus those of partitions revoked since."""
        assert self._consumer is not None
        deadline = time.monotonic() + self._settings.batch.max_wait_ms / 1000
        messages: list[Message] = []
        self._revoked_in_poll.clear()
        while len(messages) < limit and not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for msg in self._consumer.consume(limit - len(messages), min(remaining, POLL_SLICE_S)):
                error = msg.error()
                if error is None:
                    messages.append(msg)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s (topic=%s partition=%s)", error, msg.topic(), msg.partition())
        if self._producer is not None:
            self._producer.poll(0)  # serve the producer's error callbacks while idle
        if messages:
            self._mark_reachable()
            self._metrics.events_consumed.inc(len(messages))
        if self._revoked_in_poll:
            messages = self._drop_revoked(messages)
        return _Batch(messages)

    def _process(self, batch: _Batch, stats: RunStats) -> None:
        """One batch, top to bottom: decode, prepare, embed, score, build records, publish+commit."""
        model = self._model
        settings = self._settings

        with self._timed(Stage.DECODE):
            events: list[tuple[Message, DecodedEvent]] = []
            rejected: list[DeadLetterReason] = []
            outgoing: list[_Outgoing] = []
            for msg in batch.messages:
                topic, partition = _partition_key(msg)
                _, timestamp_ms = msg.timestamp()
                result = decode_event(
                    msg.value(),
                    format=settings.events.format,
                    text_field=settings.events.text_field,
                    max_bytes=settings.events.max_bytes,
                    timestamp_ms=timestamp_ms,
                )
                if isinstance(result, Rejected):
                    rejected.append(result.reason)
                    outgoing.append(self._dead_letter(msg, result, topic, partition))
                else:
                    events.append((msg, result))

        alerts = 0
        scores_list: list[float] = []
        if events:
            with self._timed(Stage.EMBED):
                prepared = [model.bundle.text_prep.prepare(event.text) for _, event in events]
                vectors = model.embedder.embed(prepared)
            with self._timed(Stage.SCORE):
                scores = model.bundle.detector.score(vectors)
                labels = model.bundle.detector.cluster_labels
                detected_at = datetime.now(UTC)
                for i in np.flatnonzero(scores.is_anomaly):
                    msg, event = events[i]
                    outgoing.append(
                        self._alert(model, msg, event, prepared[i], scores, int(i), labels, detected_at)
                    )
                    alerts += 1
                scores_list = scores.score.tolist()

        committed = (
            self._commit_transactional(batch, outgoing)
            if self.exactly_once
            else self._commit_idempotent(batch, outgoing)
        )
        if not committed:
            stats.aborted_batches += 1
            return

        self._mark_reachable()
        self._metrics.observe_batch(scores_list, [event.timestamp_ms for _, event in events])
        for reason in rejected:
            self._metrics.dead_lettered(reason)
        self._metrics.alerts_published.inc(alerts)
        stats.consumed += len(batch.messages)
        stats.processed += len(events)
        stats.dead_lettered += len(rejected)
        stats.alerts += alerts
        stats.batches += 1
        log.debug(
            "batch committed records=%d scored=%d alerts=%d dead_lettered=%d",
            len(batch.messages),
            len(events),
            alerts,
            len(rejected),
        )

    def _dead_letter(self, msg: Message, rejected: Rejected, topic: str, partition: int) -> _Outgoing:
        headers = dead_letter_headers(
            reason=rejected.reason,
            detail=rejected.detail,
            topic=topic,
            partition=partition,
            offset=_offset(msg),
            original_headers=_header_list(msg),
            instance_id=self._settings.instance_id,
        )
        return _Outgoing(self._settings.topics.dead_letter, msg.key(), msg.value(), list(headers))

    def _alert(
        self,
        model: ActiveModel,
        msg: Message,
        event: DecodedEvent,
        prepared_text: str,
        scores: Scores,
        i: int,
        labels: list[str] | None,
        detected_at: datetime,
    ) -> _Outgoing:
        topic, partition = _partition_key(msg)
        score = float(scores.score[i])
        distance = float(scores.distance[i])
        cluster = int(scores.cluster[i])
        record = build_alert(
            source=AlertSource(topic, partition, _offset(msg), msg.key(), event.timestamp_ms),
            text=event.text,
            score=score,
            threshold=1.0,
            detector=model.bundle.detector_name,
            cluster_id=cluster,
            cluster_label=labels[cluster] if labels is not None and 0 <= cluster < len(labels) else None,
            distance=distance,
            model_id=model.bundle.model_id,
            model_sha256=model.bundle.sha256,
            instance_id=self._settings.instance_id,
            text_max_chars=self._settings.alerts.text_max_chars,
            source_uri=self._settings.alerts.source_uri,
            fields=event.fields,
            detected_at=detected_at,
            prepared_text=prepared_text,
            raw_threshold=distance / score if score > 0 and np.isfinite(score) else None,
        )
        return _Outgoing(self._settings.topics.alerts, record.key, record.value, list(record.headers))

    # ----------------------------------------------------------------- publish + commit

    def _commit_transactional(self, batch: _Batch, outgoing: list[_Outgoing]) -> bool:
        """Exactly-once: outputs and input offsets in one transaction. False = aborted and rewound."""
        assert self._consumer is not None
        consumer = self._consumer
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
        try:
            with self._timed(Stage.PUBLISH):
                producer = self._require_producer()
                producer.begin_transaction()
                self._in_transaction = True
                for record in outgoing:
                    self._produce(producer, record)
            with self._timed(Stage.COMMIT):
                self._retry(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(
                        offsets, consumer.consumer_group_metadata(), self._call_timeout()
                    ),
                )
                self._retry("commit_transaction", lambda: producer.commit_transaction(self._call_timeout()))
                self._in_transaction = False
        except KafkaException as exc:
            self._metrics.transactions.labels(result=TransactionResult.ABORTED.value).inc()
            error = _kafka_error(exc)
            if error is not None and error.txn_requires_abort():
                log.warning(
                    "transaction failed (%s); aborting and rewinding %d records", error, len(batch.messages)
                )
                self._abort_transaction()
            else:
                log.error("transactional producer failed (%s); recreating it and rewinding", error or exc)
                self._discard_producer()
                if not self._stop_requested:
                    self._producer = self._new_producer()
            self._rewind(batch)
            return False
        self._metrics.transactions.labels(result=TransactionResult.COMMITTED.value).inc()
        return True

    def _commit_idempotent(self, batch: _Batch, outgoing: list[_Outgoing]) -> bool:
        """At-least-once: produce, wait for every delivery report, then commit the offsets."""
        assert self._consumer is not None
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                failures.append(error)

        with self._timed(Stage.PUBLISH):
            producer = self._require_producer()
            try:
                for record in outgoing:
                    self._produce(producer, record, on_delivery)
                while producer.flush(self._call_timeout()) > 0:
                    self._waiting("flush")
            except KafkaException as exc:
                # Only a fatal idempotence error gets here (e.g. a sequence gap the broker cannot
                # repair): the producer is unusable. Recreate it; the batch comes again.
                log.error(
                    "idempotent producer failed (%s); recreating it and rewinding", _kafka_error(exc) or exc
                )
                self._discard_producer()
                self._rewind(batch)
                return False
        if failures:
            log.warning(
                "%d deliveries failed (first: %s); rewinding %d records",
                len(failures),
                failures[0],
                len(batch.messages),
            )
            self._rewind(batch)
            return False
        with self._timed(Stage.COMMIT):
            offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # Delivered but not committed: the records come again and their alerts are
                # republished with the same ids; that is the at-least-once contract.
                log.warning(
                    "offset commit failed (%s); the batch will be redelivered", _kafka_error(exc) or exc
                )
        return True

    def _produce(
        self,
        producer: Producer,
        record: _Outgoing,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        while True:
            try:
                producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain, then retry

    def _abort_transaction(self) -> None:
        producer = self._require_producer()
        try:
            self._retry("abort_transaction", lambda: producer.abort_transaction(self._call_timeout()))
            self._in_transaction = False
        except KafkaException as exc:
            log.error("abort_transaction failed (%s); recreating the producer", _kafka_error(exc) or exc)
            self._discard_producer()
            if not self._stop_requested:
                self._producer = self._new_producer()

    def _rewind(self, batch: _Batch) -> None:
        """Seek each still-assigned partition of the batch back to its first offset, which is the
        committed offset: every earlier batch was committed before this one was polled."""
        assert self._consumer is not None
        for (topic, partition), offset in batch.first.items():
            if (topic, partition) not in self._assigned:
                continue  # its new owner starts from the committed offset
            self._seek(TopicPartition(topic, partition, offset))

    def _seek(self, tp: TopicPartition) -> None:
        assert self._consumer is not None
        try:
            self._consumer.seek(tp)
        except KafkaException as exc:
            raise PipelineError(
                f"cannot rewind {tp.topic}[{tp.partition}] to offset {tp.offset}: {_kafka_error(exc) or exc}"
            ) from exc

    # ----------------------------------------------------------------- producer lifecycle

    def _new_producer(self) -> Producer:
        producer = Producer(
            producer_config(self._settings, error_cb=self._on_producer_error, logger=self._kafka_log)
        )
        if self.exactly_once:
            self._retry(
                "init_transactions",
                lambda: producer.init_transactions(self._call_timeout()),
                extra_codes=_STARTUP_RETRY_CODES,
                producer=producer,
            )
        return producer

    def _require_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._in_transaction = False
        if producer is not None:
            try:
                producer.purge()
            except KafkaException as exc:
                log.debug("purging the discarded producer: %s", _kafka_error(exc) or exc)

    def _check_output_topics(self) -> None:
        producer = self._require_producer()
        metadata = self._retry(
            "list_topics",
            lambda: producer.list_topics(timeout=self._call_timeout()),
            extra_codes=_STARTUP_RETRY_CODES,
        )
        existing = set(metadata.topics)
        missing = [
            t for t in (self._settings.topics.alerts, self._settings.topics.dead_letter) if t not in existing
        ]
        if missing:
            raise ConfigError(
                f"output topic(s) {', '.join(missing)} do not exist on "
                f"{self._settings.kafka.bootstrap_servers}; "
                "create them (topics.alerts, topics.dead_letter) or fix the names"
            )

    # ----------------------------------------------------------------- retries, outage, stop

    def _retry(
        self,
        what: str,
        call: Callable[[], T],
        *,
        extra_codes: frozenset[int] = frozenset(),
        producer: Producer | None = None,
    ) -> T:
        """Call until it succeeds or fails non-retriably; between attempts, apply the outage
        policy and the shutdown deadline. ``producer``'s callbacks are served between attempts
        (its ``error_cb`` is what reports an outage while nothing else polls it)."""
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = _kafka_error(exc)
                if error is None or not (error.retriable() or error.code() in extra_codes):
                    raise
                log.warning("%s: %s; retrying", what, error)
                target = producer if producer is not None else self._producer
                if target is not None:
                    target.poll(0)
                self._waiting(what)

    def _waiting(self, what: str) -> None:
        self._check_broker_outage()
        if (
            self._stop_requested
            and self._stop_deadline is not None
            and time.monotonic() >= self._stop_deadline
        ):
            raise _Stopping(what)
        self._iteration_done()

    def _call_timeout(self) -> float:
        if self._stop_deadline is None:
            return KAFKA_CALL_TIMEOUT_S
        return max(0.5, min(KAFKA_CALL_TIMEOUT_S, self._stop_deadline - time.monotonic()))

    def _check_broker_outage(self) -> None:
        limit = self._settings.lifecycle.broker_unavailable_exit_seconds
        since = self._unreachable_since
        if limit > 0 and since is not None and time.monotonic() - since >= limit:
            raise BrokerUnavailableError(
                f"no Kafka broker reachable at {self._settings.kafka.bootstrap_servers} for "
                f"{time.monotonic() - since:.0f} s (lifecycle.broker_unavailable_exit_seconds = {limit:g})"
            )

    def _mark_reachable(self) -> None:
        if self._unreachable_since is not None:
            log.info("Kafka brokers reachable again after %.1f s", time.monotonic() - self._unreachable_since)
            self._unreachable_since = None
        self._health.set_broker_reachable(True)

    def _iteration_done(self) -> None:
        self._health.beat()
        self._metrics.ready.set(1 if self._health.ready()[0] else 0)
        if self._on_iteration is not None:
            self._on_iteration()

    def _swap_in_offered_model(self) -> None:
        with self._lock:
            offered, self._offered = self._offered, None
        if offered is None:
            return
        old = self._model
        self._model = offered
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

    @contextmanager
    def _timed(self, stage: Stage) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._metrics.stage_duration.labels(stage=stage.value).observe(time.perf_counter() - start)

    # ----------------------------------------------------------------- librdkafka callbacks

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self._mark_reachable()
        self._health.set_group_joined(True)
        self._health.set_assigned(bool(self._assigned))
        log.info("partitions assigned: %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked_in_poll |= keys
        self._assigned -= keys
        self._health.set_assigned(bool(self._assigned))
        log.info("partitions revoked: %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked_in_poll |= keys
        self._assigned -= keys
        self._health.set_assigned(bool(self._assigned))
        log.warning(
            "partitions lost (session timed out?), nothing will be committed for them: %s",
            _describe(partitions),
        )

    def _drop_revoked(self, messages: list[Message]) -> list[Message]:
        """Drop records of partitions revoked during the poll; re-seek those assigned again."""
        assert self._consumer is not None
        kept: list[Message] = []
        dropped: dict[PartitionKey, int] = {}
        for msg in messages:
            key = _partition_key(msg)
            if key in self._revoked_in_poll:
                dropped[key] = min(dropped.get(key, _offset(msg)), _offset(msg))
            else:
                kept.append(msg)
        reassigned = [TopicPartition(t, p) for (t, p) in dropped if (t, p) in self._assigned]
        if reassigned:
            committed = self._retry("committed", lambda: self._consumer_committed(reassigned))
            for tp in committed:
                offset = tp.offset if tp.offset >= 0 else dropped[(tp.topic, tp.partition)]
                self._seek(TopicPartition(tp.topic, tp.partition, offset))
        if dropped:
            log.info("dropped %d records of partitions revoked during the poll", len(messages) - len(kept))
        return kept

    def _consumer_committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        assert self._consumer is not None
        return self._consumer.committed(partitions, timeout=self._call_timeout())

    def _on_consumer_error(self, error: KafkaError) -> None:
        if self._connection_error(error):
            return
        if error.fatal():
            log.error("kafka consumer fatal error: %s", error)
            self._consumer_fatal = self._consumer_fatal or error
        else:
            log.warning("kafka consumer: %s", error)

    def _on_producer_error(self, error: KafkaError) -> None:
        # A fatal producer error surfaces again from the next produce/transactional call, which
        # recreates the producer; here it is only logged.
        if not self._connection_error(error):
            log.log(logging.ERROR if error.fatal() else logging.WARNING, "kafka producer: %s", error)

    def _connection_error(self, error: KafkaError) -> bool:
        """Connection trouble: librdkafka retries by itself and logs each attempt through the
        ``librdkafka`` logger, so only the start of an outage is logged here."""
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                self._health.set_broker_reachable(False)
                limit = self._settings.lifecycle.broker_unavailable_exit_seconds
                log.warning(
                    "no Kafka broker reachable (%s); retrying, not ready%s",
                    error.str(),
                    f", exiting after {limit:g} s" if limit > 0 else "",
                )
            return True
        if code in (KafkaError._TRANSPORT, KafkaError._RESOLVE):
            log.debug("kafka: %s", error)
            return True
        return False

    def _on_stats(self, stats_json: str) -> None:
        try:
            self._metrics.update_from_librdkafka_stats(stats_json)
            stats = json.loads(stats_json)
        except ValueError as exc:
            log.warning("unreadable librdkafka statistics: %s", exc)
            return
        brokers = stats.get("brokers") or {}
        if any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values()):
            self._mark_reachable()


def _describe(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "(none)"
