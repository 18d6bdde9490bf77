"""The input side: one consumer in the group, polled in micro-batches, rewound after failures.

``InputSource.poll`` returns at most ``limit`` records gathered within ``max_wait_s``. No
transaction (and no unflushed record) is ever open while ``consume`` runs, so the rebalance
callbacks have nothing to commit or abort: revoke and lost record which partitions went away,
and records of those partitions that the same poll already returned are dropped (their offsets
were not committed, so their new owner — possibly this member again, re-positioned to the
committed offset — processes them). Nothing is ever committed for a lost partition.

``rewind`` puts every still-assigned partition of a failed batch back to its *committed* offset
as the broker reports it after the failure. After a clean abort that is the batch's first offset;
after a producer was abandoned mid-commit (a hung call, see ``agent.kafka.calls``) the commit may
in fact have gone through, and the broker's answer — read once the replacement producer's
``init_transactions`` has settled the old transaction — is the only one that cannot repeat or
skip a record.

Every blocking consumer call has a deadline (``ClientCalls``); a hung consumer cannot be replaced
in-process without losing the group membership, so ``CallHung`` propagates and the process exits
(75) to be restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agent.config import Settings
from agent.health import HealthState
from agent.kafka.calls import CALL_TIMEOUT_S, ClientCalls, Tick, kafka_error
from agent.kafka.clients import consumer_config
from agent.kafka.outage import BrokerWatch, parse_stats
from exporters.metrics import AgentMetrics

log = logging.getLogger("agent.pipeline")

PartitionKey = tuple[str, int]

# One consume() call blocks at most this long, so stop requests are seen promptly and the loop
# calls consume() far more often than max.poll.interval.ms (>= 10 s) requires.
POLL_SLICE_S = 0.5


class RewindError(Exception):
    """A failed batch could not be put back (the consumer refused to seek)."""


@dataclass
class Batch:
    """Records of one poll, with each partition's first offset and the offset to commit."""

    messages: list[Message]
    first: dict[PartitionKey, int] = field(default_factory=dict)
    next_offsets: dict[PartitionKey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for msg in self.messages:
            key, offset = partition_key(msg), message_offset(msg)
            self.first[key] = min(self.first.get(key, offset), offset)
            self.next_offsets[key] = max(self.next_offsets.get(key, 0), offset + 1)

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]


def partition_key(msg: Message) -> PartitionKey:
    topic, partition = msg.topic(), msg.partition()
    assert topic is not None and partition is not None, "consumed records always have a topic/partition"
    return topic, partition


def message_offset(msg: Message) -> int:
    offset = msg.offset()
    assert offset is not None, "consumed records always have an offset"
    return offset


class InputSource:
    """The agent's consumer. ``tick`` runs while a blocking call waits (outage policy, shutdown
    deadline, watchdog); what it raises propagates."""

    def __init__(
        self,
        settings: Settings,
        *,
        watch: BrokerWatch,
        health: HealthState,
        metrics: AgentMetrics,
        tick: Tick,
        kafka_log: logging.Logger,
    ) -> None:
        self._settings = settings
        self._watch = watch
        self._health = health
        self._metrics = metrics
        self._tick = tick
        self._kafka_log = kafka_log
        self._consumer: Consumer | None = None
        self._calls = ClientCalls("consumer")
        self.assigned: set[PartitionKey] = set()
        self._revoked_in_poll: set[PartitionKey] = set()
        self._gained: set[PartitionKey] = set()
        self._given_up: set[PartitionKey] = set()
        # The committed offset librdkafka reports per assigned partition (statistics): caught_up.
        self._committed_at_assignment: dict[PartitionKey, int] = {}
        self.fatal_error: KafkaError | None = None

    def start(self) -> None:
        """Create the consumer and subscribe; joining the group happens in the first polls."""
        if self._consumer is not None:
            return
        self._consumer = Consumer(
            consumer_config(
                self._settings, error_cb=self._on_error, stats_cb=self._on_stats, logger=self._kafka_log
            )
        )
        self._consumer.subscribe(
            list(self._settings.topics.input),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _require(self) -> Consumer:
        assert self._consumer is not None, "InputSource.start() first"
        return self._consumer

    def poll(self, limit: int, max_wait_s: float, stopping: Callable[[], bool]) -> Batch:
        """Up to ``limit`` records within ``max_wait_s``, minus those of partitions revoked since."""
        consumer = self._require()
        deadline = time.monotonic() + max_wait_s
        messages: list[Message] = []
        self._revoked_in_poll.clear()
        while len(messages) < limit and not stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for msg in consumer.consume(limit - len(messages), min(remaining, POLL_SLICE_S)):
                error = msg.error()
                if error is None:
                    messages.append(msg)
                elif self._watch.refusal(error, "consuming", topic=msg.topic()):
                    break
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s (topic=%s partition=%s)", error, msg.topic(), msg.partition())
        if messages:
            self._watch.mark_reachable()
            self._metrics.events_consumed.inc(len(messages))
        if self._revoked_in_poll:
            messages = self._drop_revoked(messages)
        return Batch(messages)

    def caught_up(self, partition: PartitionKey) -> bool:
        """True when this member has consumed every record of ``partition`` that the broker had at
        the last fetch: its position is at the high watermark librdkafka cached from that fetch
        (read_committed: the last stable offset; control records are skipped, so a transactional
        input is caught up too). Unknown (never fetched, not assigned) is False. Local calls only,
        no broker round trip: the state decisions that may use the wall clock for a *quiet*
        partition (``agent.alerts``) ask this so that a partition with a backlog, which is merely
        slow to reach, is never mistaken for a quiet one."""
        consumer = self._require()
        tp = TopicPartition(*partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            position = consumer.position([tp])[0].offset
        except KafkaException:
            return False
        if high < 0 or partition not in self.assigned:
            return False
        if position < 0:
            # Nothing consumed since the assignment: it started at the committed offset that
            # librdkafka fetched then (its statistics say which, without a broker call that an
            # outage would stall), else at the earliest (auto.offset.reset); unknown until the
            # first statistics arrive.
            committed = self._committed_at_assignment.get(partition)
            if committed is None:
                return False
            position = committed if committed >= 0 else max(low, 0)
        return position >= high

    def take_assignment_changes(self) -> tuple[set[PartitionKey], set[PartitionKey]]:
        """Partitions (gained, given up) since the last call: state kept per partition (alert
        grouping) is restored for the gained ones before their first batch and dropped for the
        others. A partition given up and gained back in between is reported as gained."""
        gained, given_up = self._gained, self._given_up
        self._gained, self._given_up = set(), set()
        return gained, given_up

    def group_metadata(self) -> object:
        """The consumer's group metadata for ``send_offsets_to_transaction`` (KIP-447)."""
        return self._require().consumer_group_metadata()

    def commit(self, batch: Batch) -> None:
        """Commit the batch's offsets synchronously (at-least-once); raises KafkaException."""
        consumer = self._require()
        offsets = batch.offsets()
        if not offsets:
            return  # a batch of only summaries (alert grouping) consumed nothing
        self._calls.call(
            "commit", lambda: consumer.commit(offsets=offsets, asynchronous=False), timeout_s=CALL_TIMEOUT_S
        )

    def rewind(self, batch: Batch) -> None:
        """Seek every still-assigned partition of ``batch`` to its committed offset (see module doc)."""
        keys = [key for key in batch.first if key in self.assigned]
        if not keys:
            return  # their new owners start from the committed offsets
        for tp in self._committed([TopicPartition(t, p) for t, p in keys]):
            key = (tp.topic, tp.partition)
            # No committed offset yet: nothing of this partition ever committed, not even this batch.
            offset = tp.offset if tp.offset >= 0 else batch.first[key]
            self._seek(TopicPartition(tp.topic, tp.partition, offset))

    def _committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        consumer = self._require()
        while True:
            try:
                return self._calls.call(
                    "committed",
                    lambda: consumer.committed(partitions, timeout=CALL_TIMEOUT_S),
                    timeout_s=CALL_TIMEOUT_S,
                    tick=self._tick,
                )
            except Exception as exc:
                error = kafka_error(exc)
                if error is None or not (error.retriable() or error.code() == KafkaError._TIMED_OUT):
                    raise
                log.warning("committed offsets: %s; retrying", error)
                self._tick()

    def _seek(self, tp: TopicPartition) -> None:
        try:
            self._require().seek(tp)
        except Exception as exc:
            raise RewindError(
                f"cannot rewind {tp.topic}[{tp.partition}] to offset {tp.offset}: {kafka_error(exc) or exc}"
            ) from exc

    def close(self, timeout_s: float) -> None:
        """Leave the group within ``timeout_s`` (a consumer that cannot is left behind)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._calls.close("close", consumer.close, consumer, timeout_s=timeout_s)
        self.assigned.clear()
        self._health.set_assigned(False)

    # ----------------------------------------------------------------- librdkafka callbacks

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned |= keys
        for key in keys:
            self._committed_at_assignment.pop(key, None)
        self._gained |= keys
        self._given_up -= keys
        self._watch.mark_reachable()
        self._health.set_group_joined(True)
        self._health.set_assigned(bool(self.assigned))
        log.info("partitions assigned: %s", describe(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._gone(partitions)
        log.info("partitions revoked: %s", describe(partitions))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._gone(partitions)
        log.warning(
            "partitions lost (session timed out?), nothing will be committed for them: %s",
            describe(partitions),
        )

    def _gone(self, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked_in_poll |= keys
        self.assigned -= keys
        self._given_up |= keys
        self._gained -= keys
        self._health.set_assigned(bool(self.assigned))

    def _drop_revoked(self, messages: list[Message]) -> list[Message]:
        """Drop records of partitions revoked during the poll; re-seek those assigned again."""
        kept: list[Message] = []
        dropped: dict[PartitionKey, int] = {}
        for msg in messages:
            key = partition_key(msg)
            if key in self._revoked_in_poll:
                dropped[key] = min(dropped.get(key, message_offset(msg)), message_offset(msg))
            else:
                kept.append(msg)
        reassigned = [TopicPartition(t, p) for (t, p) in dropped if (t, p) in self.assigned]
        if reassigned:
            for tp in self._committed(reassigned):
                offset = tp.offset if tp.offset >= 0 else dropped[(tp.topic, tp.partition)]
                self._seek(TopicPartition(tp.topic, tp.partition, offset))
        if dropped:
            log.info("dropped %d records of partitions revoked during the poll", len(messages) - len(kept))
        return kept

    def _on_error(self, error: KafkaError) -> None:
        if self._watch.refusal(error, "consuming"):
            return
        if self._watch.connection_error(error):
            log.debug("kafka consumer: %s", error)
            return
        if error.fatal():
            log.error("kafka consumer fatal error: %s", error)
            self.fatal_error = self.fatal_error or error
        else:
            log.warning("kafka consumer: %s", error)

    def _on_stats(self, stats_json: str) -> None:
        try:
            self._metrics.update_from_librdkafka_stats(stats_json)
        except ValueError as exc:
            log.warning("unreadable librdkafka statistics: %s", exc)
            return
        stats = parse_stats(stats_json)
        if stats is not None:
            self._watch.observe_stats(stats)
            self._note_committed(stats)

    def _note_committed(self, stats: dict[str, object]) -> None:
        """Each assigned partition's committed offset as librdkafka knows it (fetched at assignment)."""
        topics = stats.get("topics")
        if not isinstance(topics, dict):
            return
        for topic, entry in topics.items():
            partitions = entry.get("partitions") if isinstance(entry, dict) else None
            if not isinstance(partitions, dict):
                continue
            for number, values in partitions.items():
                key = (str(topic), int(number)) if str(number).lstrip("-").isdigit() else None
                if key is None or key not in self.assigned or not isinstance(values, dict):
                    continue
                committed = values.get("committed_offset")
                if isinstance(committed, int) and not isinstance(committed, bool) and committed != -1001:
                    self._committed_at_assignment.setdefault(key, committed)
                elif committed == -1001 and values.get("fetch_state") == "active":
                    self._committed_at_assignment.setdefault(key, -1)


def describe(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "(none)"
