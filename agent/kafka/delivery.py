"""The output side: publishing a batch's records and committing its input offsets, exactly once or
at least once, with every blocking Kafka call under a deadline.

One small interface, ``Committer.commit(batch, records) -> bool``: True when the records and the
batch's offsets are committed, False when the batch failed and the consumer was rewound to its
committed offsets (the loop then polls the same records again). Two implementations:

``TransactionalCommitter`` (``delivery = "exactly_once"``)
    One Kafka transaction per batch holds the records and the input offsets
    (``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447). The
    ``transactional.id`` is stable per instance, so a restarted instance fences its crashed
    predecessor and the broker aborts the predecessor's open transaction at once. Errors are
    handled as librdkafka's transactions guide says: *retriable* → call again; *abortable*
    (``txn_requires_abort``) → ``abort_transaction`` and rewind; *fatal* (fenced, ...) → new
    producer and rewind. A call that does not return in time (``agent.kafka.calls``) counts as
    fatal: the producer is abandoned, and the new one's ``init_transactions`` fences it and
    settles its transaction before the rewind reads the committed offsets — so a commit that did
    go through is not repeated, and one that did not is not lost.
``IdempotentCommitter`` (``delivery = "at_least_once"``)
    An idempotent producer: the records are produced, every delivery report awaited, then the
    offsets committed. A failed delivery rewinds the batch; a crash between delivery and commit
    republishes the batch's alerts with the same ``id``, which subscribers dedupe on.

``inspect_output_topics`` checks at start-up that the output topics exist and reads their
``max.message.bytes``, which bounds every outgoing record (``record_max_bytes``) and the
producer's batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclOperation
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from agent.config import ConfigError, Delivery, GroupBy, Settings
from agent.kafka.calls import CALL_TIMEOUT_S, DEADLINE_MARGIN_S, CallHung, ClientCalls, Tick, kafka_error
from agent.kafka.clients import producer_config
from agent.kafka.outage import BrokerWatch
from agent.kafka.permissions import Permissions
from agent.kafka.source import Batch, InputSource
from exporters.dead_letters import FRAMING_BYTES
from exporters.metrics import AgentMetrics, KafkaCall, ReplaceReason, Stage, TransactionResult

log = logging.getLogger("agent.pipeline")

T = TypeVar("T")
Header = tuple[str, bytes]
# Errors during start-up (metadata, init_transactions) that mean "broker not there yet".
STARTUP_RETRY_CODES = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
# A topic whose max.message.bytes cannot be read (no DescribeConfigs permission) is assumed to
# have the broker's default.
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


@dataclass(frozen=True)
class OutgoingRecord:
    """One record a batch publishes: an alert, a summary, a dead-letter copy or a changelog
    record (``partition`` set: a changelog record goes to its input partition's number; None =
    the producer's partitioner)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    partition: int | None = None


class Committer(Protocol):
    """Publishes a batch's records and commits its offsets; see the module docstring."""

    def start(self) -> None: ...

    def commit(self, batch: Batch, records: Sequence[OutgoingRecord]) -> bool: ...

    def close(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class OutputTopics:
    """What start-up learned about the output topics."""

    max_message_bytes: dict[str, int]

    def smallest_limit(self) -> int:
        return min(self.max_message_bytes.values())


def record_max_bytes(settings: Settings, topics: OutputTopics) -> int:
    """The largest record (key + value + headers) the producer and every output topic accept."""
    return min(settings.producer_message_max_bytes(), topics.smallest_limit()) - FRAMING_BYTES


def inspect_output_topics(
    settings: Settings, watch: BrokerWatch, tick: Tick, kafka_log: logging.Logger
) -> OutputTopics:
    """Check the output topics exist and read their ``max.message.bytes``.

    Raises ConfigError naming missing topics (the agent would otherwise fail every batch), and
    whatever ``tick`` raises (outage policy) while no broker answers.
    """
    names = [settings.topics.alerts, settings.topics.dead_letter]
    conf = settings.kafka.client_config()
    conf.update({"error_cb": watch.client_error, "logger": kafka_log})
    admin = AdminClient(conf)
    calls = ClientCalls("admin")
    try:
        missing: list[str] = []
        for name in names:
            metadata = retry_startup(
                calls,
                "list_topics",
                lambda n=name: admin.list_topics(topic=n, timeout=CALL_TIMEOUT_S),  # type: ignore[misc]
                tick,
                admin.poll,
            )
            topic = metadata.topics.get(name)
            error = None if topic is None else topic.error
            if error is not None and watch.refusal(error, "checking the output topics", topic=name):
                tick()  # raises the refusal
            if topic is None or error is not None:
                missing.append(name)
        if missing:
            raise ConfigError(
                f"output topic(s) {', '.join(missing)} do not exist on {settings.kafka.bootstrap_servers}; "
                "create them (topics.alerts, topics.dead_letter) or fix the names"
            )
        watch.mark_reachable()
        _check_authorized(admin, settings, watch, tick)
        limits: dict[str, int] = {}
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        for resource, future in admin.describe_configs(resources, request_timeout=CALL_TIMEOUT_S).items():
            try:
                entries = future.result(timeout=CALL_TIMEOUT_S + DEADLINE_MARGIN_S)
                limits[resource.name] = int(entries["max.message.bytes"].value)
            except (KafkaException, TimeoutError, KeyError, ValueError, TypeError) as exc:
                log.warning(
                    "cannot read max.message.bytes of topic %s (%s); assuming the broker default %d",
                    resource.name,
                    kafka_error(exc) or exc,
                    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
                )
                limits[resource.name] = BROKER_DEFAULT_MAX_MESSAGE_BYTES
        return OutputTopics(limits)
    finally:
        calls.retire(admin)


def _check_authorized(admin: AdminClient, settings: Settings, watch: BrokerWatch, tick: Tick) -> None:
    """Refuse to start when the principal may not READ an input or WRITE an output topic.

    Without this, a principal that may DESCRIBE but not WRITE an output topic starts, reports
    ready, and aborts every batch that has a record for that topic (librdkafka's error names no
    topic). Topic metadata carries the operations the principal is allowed (KIP-430); a broker
    that does not report them, or an input topic that does not exist yet, is not checked.
    """
    needed = {name: [AclOperation.READ] for name in settings.topics.input}
    needed |= {
        settings.topics.alerts: [AclOperation.WRITE],
        settings.topics.dead_letter: [AclOperation.WRITE],
    }
    if settings.topics.feedback is not None:
        needed[settings.topics.feedback] = [AclOperation.READ]
    if settings.alerts.group_by is GroupBy.PATTERN:  # the grouping changelog: written, read back
        needed[settings.topics.groups_topic()] = [AclOperation.READ, AclOperation.WRITE]
    futures = admin.describe_topics(
        TopicCollection(list(needed)), include_authorized_operations=True, request_timeout=CALL_TIMEOUT_S
    )
    permissions = Permissions(settings)
    for name, future in futures.items():
        try:
            described = future.result(timeout=CALL_TIMEOUT_S + DEADLINE_MARGIN_S)
        except (KafkaException, TimeoutError) as exc:
            error = kafka_error(exc)
            if error is not None and watch.refusal(error, "checking topic permissions", topic=name):
                tick()  # raises the refusal
            log.debug("describe_topics %s: %s", name, error or exc)
            continue
        allowed = described.authorized_operations
        if allowed is None or AclOperation.ALL in allowed:
            continue
        for operation in needed[name]:
            if operation not in allowed:
                raise permissions.missing(
                    operation.name, f"topic {name}", action="checking topic permissions"
                )


def retry_startup(
    calls: ClientCalls, what: str, call: Callable[[], T], tick: Tick, serve: Callable[[float], object]
) -> T:
    """``call`` until the broker answers; ``serve(0)`` runs the client's callbacks in between (its
    ``error_cb`` is what reports that no broker is reachable, for the outage policy)."""
    while True:
        try:
            return calls.call(what, call, timeout_s=CALL_TIMEOUT_S, tick=tick)
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is None or not (error.retriable() or error.code() in STARTUP_RETRY_CODES):
                raise
            log.warning("%s: %s; retrying", what, error)
            serve(0)
            tick()


class _Producer:
    """The producer in use and its calls; replaced whole when it fails or hangs."""

    def __init__(
        self, settings: Settings, topics: OutputTopics, watch: BrokerWatch, kafka_log: logging.Logger
    ):
        self.settings = settings
        self.handle = Producer(
            producer_config(
                settings,
                error_cb=self._on_error,
                logger=kafka_log,
                topic_max_bytes=topics.smallest_limit(),
            )
        )
        self.calls = ClientCalls("producer")
        self._watch = watch
        self.outages_at_birth = watch.outages

    def _on_error(self, error: KafkaError) -> None:
        # A fatal producer error surfaces again from the next produce/transactional call, which
        # replaces the producer; here it is only logged.
        if self._watch.refusal(error, "producing"):
            return
        if self._watch.connection_error(error):
            log.debug("kafka producer: %s", error)
        else:
            log.log(logging.ERROR if error.fatal() else logging.WARNING, "kafka producer: %s", error)

    def produce(
        self, record: OutgoingRecord, on_delivery: Callable[[KafkaError | None, Message], None] | None = None
    ) -> None:
        while True:
            try:
                if record.partition is None:
                    self.handle.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers),
                        on_delivery=on_delivery,
                    )
                else:
                    self.handle.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers),
                        partition=record.partition,
                        on_delivery=on_delivery,
                    )
                return
            except BufferError:
                self.handle.poll(0.1)  # local queue full: let deliveries drain, then retry


class _CommitterBase:
    """Producer lifecycle, retries and metrics shared by both committers."""

    def __init__(
        self,
        settings: Settings,
        source: InputSource,
        topics: OutputTopics,
        *,
        watch: BrokerWatch,
        metrics: AgentMetrics,
        tick: Tick,
        call_timeout: Callable[[], float],
        stopping: Callable[[], bool],
        kafka_log: logging.Logger,
    ) -> None:
        self._settings = settings
        self._source = source
        self._topics = topics
        self._watch = watch
        self._metrics = metrics
        self._tick = tick
        self._call_timeout = call_timeout
        self._stopping = stopping
        self._kafka_log = kafka_log
        self._producer: _Producer | None = None
        self._permissions = Permissions(settings)

    def start(self) -> None:
        self._require_producer()

    def _require_producer(self) -> _Producer:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def _new_producer(self) -> _Producer:
        return _Producer(self._settings, self._topics, self._watch, self._kafka_log)

    def _retry(
        self, producer: _Producer, what: str, call: Callable[[], T], extra: frozenset[int] = frozenset()
    ) -> T:
        """``call`` under a deadline until it succeeds or fails non-retriably."""
        while True:
            try:
                return producer.calls.call(what, call, timeout_s=self._call_timeout(), tick=self._tick)
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is not None:
                    refused = self._permissions.explain(error, action=f"calling {what}")
                    if refused is not None:
                        raise refused from None
                if error is None or not (error.retriable() or error.code() in extra):
                    raise
                log.warning("%s: %s; retrying", what, error)
                producer.handle.poll(0)  # serve its error_cb: that is what reports an outage
                self._tick()

    def _replace_producer(self, reason: ReplaceReason) -> None:
        """Drop the producer (abandoning it if a call of it hung) and create a new one, unless the
        agent is stopping. For a transactional producer the new one's ``init_transactions`` fences
        the old one; see the subclass."""
        old, self._producer = self._producer, None
        self._metrics.producers_replaced.labels(reason=reason.value).inc()
        if old is not None:
            if not old.calls.hung:
                try:
                    old.handle.purge()
                except KafkaException as exc:
                    log.debug("purging the discarded producer: %s", kafka_error(exc) or exc)
            old.calls.retire(old.handle)  # raises ClientsExhausted when too many are stuck
            del old
        if not self._stopping():
            self._producer = self._new_producer()

    def _hung(self, exc: CallHung) -> None:
        self._metrics.kafka_calls_hung.labels(call=KafkaCall(exc.what).value).inc()
        log.error(
            "%s; abandoning the producer and starting a new one (librdkafka can block past its "
            "timeout after a broker restart)",
            exc,
        )

    def close(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            handle = producer.handle
            producer.calls.close("flush", lambda: _flush(handle, timeout_s), handle, timeout_s=timeout_s)


def _flush(producer: Producer, timeout_s: float) -> None:
    producer.flush(timeout_s)


class TransactionalCommitter(_CommitterBase):
    """Exactly-once: one transaction per batch (see the module docstring)."""

    _in_transaction = False

    def _new_producer(self) -> _Producer:
        while True:
            producer = super()._new_producer()
            handle = producer.handle
            try:
                self._retry(
                    producer,
                    "init_transactions",
                    lambda h=handle: h.init_transactions(self._call_timeout()),  # type: ignore[misc]
                    STARTUP_RETRY_CODES,
                )
                return producer
            except CallHung as exc:
                self._hung(exc)
                producer.calls.retire(producer.handle)  # raises ClientsExhausted when too many are stuck

    def commit(self, batch: Batch, records: Sequence[OutgoingRecord]) -> bool:
        offsets = batch.offsets()
        self._renew_after_outage()
        refusals: list[tuple[KafkaError, str | None]] = []

        def on_delivery(error: KafkaError | None, msg: Message) -> None:
            if error is not None and self._permissions.is_refusal(error):
                refusals.append((error, msg.topic()))

        try:
            with self._metrics.timed(Stage.PUBLISH):
                producer = self._require_producer()
                handle = producer.handle
                handle.begin_transaction()
                self._in_transaction = True
                for record in records:
                    producer.produce(record, on_delivery)
            with self._metrics.timed(Stage.COMMIT):
                if offsets:  # none in a batch of only summaries (alert grouping)
                    metadata = self._source.group_metadata()
                    self._retry(
                        producer,
                        "send_offsets_to_transaction",
                        lambda: handle.send_offsets_to_transaction(offsets, metadata, self._call_timeout()),
                    )
                self._retry(
                    producer, "commit_transaction", lambda: handle.commit_transaction(self._call_timeout())
                )
                self._in_transaction = False
        except CallHung as exc:
            self._aborted()
            self._hung(exc)
            self._replace_producer(ReplaceReason.HUNG)
            self._rewind(batch)
            return False
        except KafkaException as exc:
            self._aborted()
            for refused_error, topic in refusals:  # a delivery the broker refused: no retry helps
                refused = self._permissions.explain(refused_error, action="producing", topic=topic)
                if refused is not None:
                    raise refused from None
            error = kafka_error(exc)
            if error is not None and error.txn_requires_abort():
                log.warning(
                    "transaction failed (%s); aborting and rewinding %d records", error, len(batch.messages)
                )
                self._abort()
            else:
                log.error("transactional producer failed (%s); recreating it and rewinding", error or exc)
                self._replace_producer(ReplaceReason.FATAL)
            self._rewind(batch)
            return False
        self._metrics.transactions.labels(result=TransactionResult.COMMITTED.value).inc()
        self._watch.mark_reachable()
        return True

    def _renew_after_outage(self) -> None:
        """A transactional producer that lived through a broker outage is replaced before its next
        transaction: librdkafka keeps using the transaction coordinator it cached before the
        outage (#5511), and the first transactional call after a broker restart was measured
        blocking until its deadline. A new producer looks the coordinator up afresh; replacing it
        costs one ``init_transactions``, once per outage."""
        producer = self._producer
        if producer is not None and producer.outages_at_birth < self._watch.outages and self._watch.reachable:
            log.info("replacing the transactional producer after a broker outage")
            self._replace_producer(ReplaceReason.OUTAGE)

    def _aborted(self) -> None:
        self._metrics.transactions.labels(result=TransactionResult.ABORTED.value).inc()

    def _abort(self) -> None:
        producer = self._require_producer()
        handle = producer.handle
        try:
            self._retry(producer, "abort_transaction", lambda: handle.abort_transaction(self._call_timeout()))
            self._in_transaction = False
        except CallHung as exc:
            self._hung(exc)
            self._replace_producer(ReplaceReason.HUNG)
        except KafkaException as exc:
            log.error("abort_transaction failed (%s); recreating the producer", kafka_error(exc) or exc)
            self._replace_producer(ReplaceReason.FATAL)

    def _replace_producer(self, reason: ReplaceReason) -> None:
        self._in_transaction = False
        super()._replace_producer(reason)

    def _rewind(self, batch: Batch) -> None:
        # Stopping: no producer was created to settle an uncertain transaction, and nothing will
        # be polled again; the partition's next owner starts from the committed offsets.
        if not self._stopping():
            self._source.rewind(batch)

    def close(self, timeout_s: float) -> None:
        producer = self._producer
        if producer is not None and self._in_transaction:
            handle = producer.handle
            producer.calls.close(
                "abort_transaction", lambda: handle.abort_transaction(timeout_s), handle, timeout_s=timeout_s
            )
            self._producer = None
            self._in_transaction = False
            return
        super().close(timeout_s)


class IdempotentCommitter(_CommitterBase):
    """At-least-once: produce, await every delivery report, then commit the offsets."""

    def commit(self, batch: Batch, records: Sequence[OutgoingRecord]) -> bool:
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                failures.append(error)

        with self._metrics.timed(Stage.PUBLISH):
            producer = self._require_producer()
            handle = producer.handle
            try:
                for record in records:
                    producer.produce(record, on_delivery)
                while self._retry(producer, "flush", lambda: handle.flush(self._call_timeout())) > 0:
                    self._tick()
            except CallHung as exc:
                self._hung(exc)
                self._replace_producer(ReplaceReason.HUNG)
                self._source.rewind(batch)
                return False
            except KafkaException as exc:
                # Only a fatal idempotence error gets here (e.g. a sequence gap the broker cannot
                # repair): the producer is unusable. Recreate it; the batch comes again.
                log.error(
                    "idempotent producer failed (%s); recreating it and rewinding", kafka_error(exc) or exc
                )
                self._replace_producer(ReplaceReason.FATAL)
                self._source.rewind(batch)
                return False
        if failures:
            log.warning(
                "%d deliveries failed (first: %s); rewinding %d records",
                len(failures),
                failures[0],
                len(batch.messages),
            )
            self._source.rewind(batch)
            return False
        with self._metrics.timed(Stage.COMMIT):
            try:
                self._source.commit(batch)
            except KafkaException as exc:
                # Delivered but not committed: the records come again and their alerts are
                # republished with the same ids; that is the at-least-once contract.
                log.warning(
                    "offset commit failed (%s); the batch will be redelivered", kafka_error(exc) or exc
                )
        self._watch.mark_reachable()
        return True


def committer_class(delivery: Delivery) -> type[TransactionalCommitter] | type[IdempotentCommitter]:
    """The committer for ``delivery``."""
    return TransactionalCommitter if delivery is Delivery.EXACTLY_ONCE else IdempotentCommitter
