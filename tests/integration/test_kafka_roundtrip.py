"""Round trips through a real broker: what the agent relies on Kafka (and librdkafka) to keep.

* Keys, values (including null), headers (order, duplicates, null and binary values) and
  per-partition order survive 10,000 messages on a 3-partition topic, with nothing lost or added.
* Transactions work on the session broker: a committed transaction is visible to read_committed
  consumers and an aborted one is not, and consumer offsets sent inside a transaction are
  committed with it and only with it. The agent's exactly-once mode needs all of that.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from kafka_fixtures import GroupFactory, TopicFactory

pytestmark = pytest.mark.integration

MESSAGES = 10_000
PARTITIONS = 3
KEYS = 100
CONSUME_TIMEOUT_S = 60.0

# str | bytes: the type confluent-kafka declares for header values (we only use bytes or None).
Headers = list[tuple[str, str | bytes | None]]


def _key(seq: int) -> bytes:
    return f"key-{seq % KEYS:03d}".encode()


def _value(seq: int) -> bytes | None:
    # Every 997th message is a tombstone (null value), which must stay null rather than b"".
    return None if seq % 997 == 996 else f"event {seq} · ünïcødé ✓".encode()


def _headers(seq: int) -> Headers:
    return [
        ("seq", str(seq).encode()),
        ("dup", b"first"),
        ("binary", bytes([seq % 256, 0, 255])),
        ("dup", b"second"),
        ("maybe-null", None if seq % 2 else b""),
    ]


def _consumer(bootstrap: str, group: str, **extra: str | bool) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def _poll_until(consumer: Consumer, done: int, deadline_s: float = CONSUME_TIMEOUT_S) -> list[Message]:
    """Consumes until `done` messages arrived, failing on any error or the deadline."""
    received: list[Message] = []
    deadline = time.monotonic() + deadline_s
    while len(received) < done:
        assert time.monotonic() < deadline, f"only {len(received)} of {done} messages within {deadline_s}s"
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            error = msg.error()
            assert error is None, f"consume error: {error}"
            received.append(msg)
    return received


def test_keyed_messages_with_headers_round_trip_in_order(
    kafka_bootstrap: str, make_topic: TopicFactory, make_group: GroupFactory
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered: dict[int, tuple[int, int]] = {}
    delivery_errors: list[str] = []

    def on_delivery(seq: int) -> Callable[[KafkaError | None, Message], None]:
        # Delivery reports carry no headers, so each message gets a callback bound to its seq.
        def report(err: KafkaError | None, msg: Message) -> None:
            partition, offset = msg.partition(), msg.offset()
            if err is not None or partition is None or offset is None:
                delivery_errors.append(f"message {seq}: {err}")
            else:
                delivered[seq] = (partition, offset)

        return report

    for seq in range(MESSAGES):
        producer.produce(
            topic, key=_key(seq), value=_value(seq), headers=_headers(seq), on_delivery=on_delivery(seq)
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after flush"
    assert delivery_errors == []
    assert sorted(delivered) == list(range(MESSAGES))
    partition_of_key: dict[bytes, set[int]] = defaultdict(set)
    for seq, (partition, _) in delivered.items():
        partition_of_key[_key(seq)].add(partition)
    assert all(len(parts) == 1 for parts in partition_of_key.values()), "a key was spread over partitions"
    assert {p for p, _ in delivered.values()} == set(range(PARTITIONS)), "keys did not spread over partitions"

    consumer = _consumer(kafka_bootstrap, make_group())
    try:
        consumer.subscribe([topic])
        received = _poll_until(consumer, MESSAGES)
        stored = 0
        for partition in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            stored += high - low
    finally:
        consumer.close()

    assert len(received) == MESSAGES
    assert stored == MESSAGES, "the topic holds more or fewer records than were produced"
    last_seq: dict[int, int] = {}
    last_offset: dict[int, int] = {}
    seen: set[int] = set()
    for msg in received:
        headers = msg.headers() or []
        seq = int(dict(headers)["seq"] or b"-1")
        position = (msg.partition(), msg.offset())
        assert seq not in seen, f"message {seq} delivered twice"
        seen.add(seq)
        assert position == delivered[seq]
        partition, offset = delivered[seq]
        assert msg.key() == _key(seq)
        assert msg.value() == _value(seq)
        assert headers == _headers(seq)
        assert seq > last_seq.get(partition, -1), f"partition {partition} out of order at message {seq}"
        assert offset > last_offset.get(partition, -1)
        last_seq[partition], last_offset[partition] = seq, offset
    assert seen == set(range(MESSAGES))


def _values_until(consumer: Consumer, last: bytes) -> list[bytes | None]:
    """Values read until (and including) the message whose value is `last`."""
    values: list[bytes | None] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while last not in values:
        assert time.monotonic() < deadline, f"{last!r} not seen within {CONSUME_TIMEOUT_S}s; got {values}"
        values.extend(msg.value() for msg in _poll_until(consumer, 1))
    return values


def test_committed_transaction_visible_aborted_one_hidden(
    kafka_bootstrap: str, make_topic: TopicFactory, make_group: GroupFactory
) -> None:
    topic = make_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"txn-{topic}"})
    producer.init_transactions(30)
    for outcome, values in (
        ("commit", [b"committed-0", b"committed-1", b"committed-2"]),
        ("abort", [b"aborted-0", b"aborted-1", b"aborted-2"]),
        ("commit", [b"committed-3"]),
    ):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value)
        producer.flush(30)
        if outcome == "commit":
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    committed_reader = _consumer(kafka_bootstrap, make_group(), **{"isolation.level": "read_committed"})
    uncommitted_reader = _consumer(kafka_bootstrap, make_group(), **{"isolation.level": "read_uncommitted"})
    try:
        committed_reader.subscribe([topic])
        uncommitted_reader.subscribe([topic])
        committed_view = _values_until(committed_reader, b"committed-3")
        uncommitted_view = _values_until(uncommitted_reader, b"committed-3")
    finally:
        committed_reader.close()
        uncommitted_reader.close()

    assert committed_view == [b"committed-0", b"committed-1", b"committed-2", b"committed-3"]
    # The aborted records did reach the log: only the isolation level hides them.
    assert uncommitted_view == [
        b"committed-0",
        b"committed-1",
        b"committed-2",
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
        b"committed-3",
    ]


def test_offsets_sent_in_transaction_commit_only_with_it(
    kafka_bootstrap: str, make_topic: TopicFactory, make_group: GroupFactory
) -> None:
    """Consume-transform-produce as the agent's exactly-once mode does it."""
    source, sink, group = make_topic(), make_topic(), make_group()
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(4):
        plain.produce(source, value=f"in-{i}".encode())
    assert plain.flush(30) == 0

    consumer = _consumer(kafka_bootstrap, group, **{"isolation.level": "read_committed"})
    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"txn-{group}"})
    try:
        consumer.subscribe([source])
        inputs = _poll_until(consumer, 4)
        txn.init_transactions(30)

        def process(batch: list[Message], outcome: str) -> None:
            txn.begin_transaction()
            for msg in batch:
                txn.produce(sink, value=b"out-" + (msg.value() or b""))
            last = batch[-1]
            partition, offset = last.partition(), last.offset()
            assert partition is not None and offset is not None
            txn.send_offsets_to_transaction(
                [TopicPartition(source, partition, offset + 1)],
                consumer.consumer_group_metadata(),
                30,
            )
            if outcome == "commit":
                txn.commit_transaction(30)
            else:
                txn.abort_transaction(30)

        def committed_offset() -> int:
            (tp,) = consumer.committed([TopicPartition(source, 0)], timeout=30)
            return int(tp.offset)

        process(inputs[:2], "abort")
        assert committed_offset() < 0, "offsets of an aborted transaction were committed"
        process(inputs, "commit")
        assert committed_offset() == 4
    finally:
        consumer.close()

    reader = _consumer(kafka_bootstrap, make_group(), **{"isolation.level": "read_committed"})
    try:
        reader.subscribe([sink])
        outputs = _values_until(reader, b"out-in-3")
    finally:
        reader.close()
    assert outputs == [b"out-in-0", b"out-in-1", b"out-in-2", b"out-in-3"]
