"""Compacted state topics: created (or checked) at start-up, read back for assigned partitions.

State that must survive a crash follows Kafka Streams: every change is a record on a compacted
topic, produced **in the same transaction** as the batch's alerts and input offsets, so the state
a restarted agent reads back is exactly the state of the last committed batch — never ahead of the
offsets (a change of an aborted batch is never visible to ``read_committed`` readers), never behind.

Two such topics:

* the state changelog (``topics.groups``, default ``<alerts topic>.groups``): the grouping windows
  (one record per input topic, partition and pattern), the rate keys and each input partition's
  event time, every record written to the changelog partition with the *input partition's
  number*, so an agent restores only the partitions it was assigned — the layout of Kafka
  Streams' changelogs. It needs at least as many partitions as the largest input topic. Grouping
  keys are JSON arrays, the others JSON objects naming their ``kind``.
* the feedback topic (``topics.feedback``): operators' verdicts per pattern, read whole by every
  instance (``agent.alerts.verdicts``).

``ensure_changelog_topic`` creates the grouping changelog when it is missing (compacted, one
partition per input partition, the broker's default replication) — an agent whose principal may
not create topics gets one message saying what to create or grant — and refuses an existing one
that is not compacted or has fewer partitions than an input topic. ``read_partitions`` reads
partitions from the beginning to their end as a ``read_committed`` reader sees it (the last
stable offset: a transaction still open elsewhere is not part of the state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from agent.config import ConfigError, Settings
from agent.kafka.calls import CALL_TIMEOUT_S, DEADLINE_MARGIN_S, ClientCalls, kafka_error
from agent.kafka.delivery import retry_startup
from agent.kafka.outage import BrokerWatch
from agent.kafka.permissions import KafkaPermissionError

__all__ = ["ensure_changelog_topic", "read_partitions"]

log = logging.getLogger(__name__)

Tick = Callable[[], None]
T = TypeVar("T")
# One consume call blocks at most this long, so ``tick`` (watchdog, shutdown) runs in between.
READ_SLICE_S = 0.5


def ensure_changelog_topic(
    settings: Settings, watch: BrokerWatch, tick: Tick, kafka_log: logging.Logger
) -> dict[str, int]:
    """Make sure the state changelog exists with enough partitions; returns the input topics'
    partition counts (those that exist).

    Raises ConfigError when it exists with fewer partitions than an input topic (records of the
    higher input partitions would have nowhere to go), KafkaPermissionError when it is missing and
    the principal may not create it.
    """
    name = settings.topics.groups_topic()
    conf = settings.kafka.client_config()
    conf.update({"error_cb": watch.client_error, "logger": kafka_log})
    admin = AdminClient(conf)
    calls = ClientCalls("admin")
    try:
        metadata = retry_startup(
            calls, "list_topics", lambda: admin.list_topics(timeout=CALL_TIMEOUT_S), tick, admin.poll
        )
        inputs = {
            topic: len(metadata.topics[topic].partitions)
            for topic in settings.topics.input
            if topic in metadata.topics and metadata.topics[topic].error is None
        }
        needed = max(inputs.values(), default=1)
        existing = metadata.topics.get(name)
        if existing is not None and existing.error is None:
            count = len(existing.partitions)
            if count < needed:
                widest = max(inputs, key=lambda t: inputs[t])
                raise ConfigError(
                    f"topic {name} (the grouping changelog, topics.groups) has {count} partition(s), "
                    f"fewer than input topic {widest} ({needed}): add partitions to it "
                    f"(kafka-topics.sh --alter --topic {name} --partitions {needed}) or name another"
                )
            _require_compaction(admin, name)
            return inputs
        _create(admin, name, needed, settings)
        log.info("created the grouping changelog %s (compacted, %d partitions)", name, needed)
        return inputs
    finally:
        calls.retire(admin)


def _create(admin: AdminClient, name: str, partitions: int, settings: Settings) -> None:
    topic = NewTopic(name, num_partitions=partitions, config={"cleanup.policy": "compact"})
    future = admin.create_topics([topic], operation_timeout=CALL_TIMEOUT_S)[name]
    try:
        future.result(timeout=CALL_TIMEOUT_S + DEADLINE_MARGIN_S)
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return  # another instance created it meanwhile
        if error is not None and error.code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        ):
            raise KafkaPermissionError(
                f"the grouping changelog {name} does not exist and Kafka denied creating it "
                f"({error.name()}): create it (cleanup.policy=compact, {partitions} partitions) or "
                f"grant CREATE on topic {name}; the agent needs READ and WRITE on it either way "
                "(docs/operations.md, 'Secured clusters')"
            ) from None
        raise ConfigError(f"cannot create the grouping changelog {name}: {error or exc}") from None


def _require_compaction(admin: AdminClient, name: str) -> None:
    """ConfigError when the changelog's ``cleanup.policy`` is readable and not compacting: with
    plain retention the state of a quiet pattern would expire, and a restart would forget its
    window. Unreadable (no DescribeConfigs): logged, not refused."""
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        entries = admin.describe_configs([resource], request_timeout=CALL_TIMEOUT_S)[resource].result(
            timeout=CALL_TIMEOUT_S + DEADLINE_MARGIN_S
        )
        policy = str(entries["cleanup.policy"].value)
    except (KafkaException, TimeoutError, KeyError) as exc:
        log.warning(
            "cannot read cleanup.policy of %s (%s); make sure it is compact", name, kafka_error(exc) or exc
        )
        return
    if "compact" not in policy:
        raise ConfigError(
            f"topic {name} (the grouping changelog, topics.groups) has cleanup.policy={policy}: its "
            "records are the grouping state and must not expire; set cleanup.policy=compact "
            f"(kafka-configs.sh --alter --entity-type topics --entity-name {name} "
            "--add-config cleanup.policy=compact) or name another topic"
        )


def read_partitions(
    settings: Settings,
    topic: str,
    partitions: Iterable[int],
    *,
    tick: Tick,
    kafka_log: logging.Logger,
    give_up_s: float = 300.0,
) -> Iterator[Message]:
    """Every committed record of ``topic``'s ``partitions``, from the beginning to the end a
    ``read_committed`` reader sees now, in offset order per partition.

    A partition the topic does not have is skipped. Raises TimeoutError when the end is not reached
    within ``give_up_s`` (a broker that stopped answering), and whatever ``tick`` raises.
    """
    wanted = sorted(set(partitions))
    if not wanted:
        return
    conf = settings.kafka.client_config()
    conf.update(
        {
            # The agent's own group: a consumer with a group id looks up its coordinator, which
            # needs READ on the group, and that ACL the agent has. This reader never joins the
            # group (assign() only) and never commits.
            "group.id": settings.kafka.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "logger": kafka_log,
        }
    )
    consumer = Consumer(conf)
    calls = ClientCalls("state-reader")
    try:
        metadata = calls.call(
            "list_topics",
            lambda: consumer.list_topics(topic, timeout=CALL_TIMEOUT_S),
            timeout_s=CALL_TIMEOUT_S,
        )
        have = set(metadata.topics[topic].partitions) if topic in metadata.topics else set()
        todo = {p for p in wanted if p in have}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(todo)])
        give_up = time.monotonic() + give_up_s
        while todo:
            if time.monotonic() > give_up:
                raise TimeoutError(f"reading {topic} partitions {sorted(todo)} did not reach their end")
            tick()
            for msg in consumer.consume(1000, READ_SLICE_S):
                error = msg.error()
                if error is None:
                    yield msg
                elif error.code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition() or 0)
                elif not error.retriable():
                    raise KafkaException(error)
    finally:
        calls.close("close", consumer.close, consumer, timeout_s=CALL_TIMEOUT_S)
