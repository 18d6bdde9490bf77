"""No record can stop the agent: every hostile kind, alone on a partition of its own, is dead-lettered
with its documented reason or scored, and the partition moves on to its end offset.

Each of the kinds in tests/hostile_records.py gets one partition of the input topic: the hostile
record, then a good event behind it (a crash loop would never reach it). One ``anomaly-agent run``
process consumes them all; it must never exit, every partition's committed offset must reach its
end, and the dead-letter topic must hold exactly the expected records, each once, with its reason.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from agent_helpers import AgentProcess, AgentTopics, agent_env, offsets, read_committed
from confluent_kafka import Producer
from hostile_records import ANY_REASON, INPUT_TOPIC_MAX_MESSAGE_BYTES, KINDS, MAX_BYTES, Hostile, hostile
from kafka_fixtures import GroupFactory, TopicFactory
from raw_producer import produce_raw

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = json.dumps({"text": "RAS KERNEL INFO instruction cache parity error corrected"}).encode()


def test_every_hostile_kind_alone_on_its_partition_is_accounted_for(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    tmp_path: Path,
) -> None:
    rng = random.Random(10)
    records = [hostile(kind, rng) for kind in KINDS]
    topics = AgentTopics(
        make_topic(len(records), config={"max.message.bytes": str(INPUT_TOPIC_MAX_MESSAGE_BYTES)}),
        make_topic(1),
        make_topic(1),
        make_group(),
    )
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": INPUT_TOPIC_MAX_MESSAGE_BYTES + 100_000}
    )
    for partition, record in enumerate(records):
        if record.raw_header_names:
            headers = [(name, value) for name, value in record.headers if isinstance(name, bytes)]
            produce_raw(
                kafka_bootstrap, topics.input, [(record.key, record.value, headers)], partition=partition
            )
        else:
            producer.produce(
                topics.input,
                key=record.key,
                value=record.value,
                headers=list(record.headers),
                partition=partition,
            )
        producer.produce(topics.input, value=GOOD, partition=partition)
    assert producer.flush(60) == 0

    env = agent_env(
        kafka_bootstrap, topics, agent_bundle, instance_id="hostile", events__max_bytes=str(MAX_BYTES)
    )
    agent = AgentProcess(env, tmp_path / "agent.log")
    agent_processes.append(agent)
    deadline = time.monotonic() + 240
    committed, ends = offsets(kafka_bootstrap, topics.group, topics.input)
    while committed != ends:
        assert agent.proc.poll() is None, f"the agent exited ({agent.proc.returncode}):\n{agent.tail()}"
        assert time.monotonic() < deadline, f"partitions stalled: committed {committed}, ends {ends}"
        time.sleep(1)
        committed, ends = offsets(kafka_bootstrap, topics.group, topics.input)
    assert all(end == 2 for end in ends.values())

    dead = read_committed(kafka_bootstrap, topics.dead_letter)
    by_partition: dict[int, list[dict[str, bytes]]] = {}
    for msg in dead:
        headers = dict(msg.headers() or [])
        assert int(headers["dlq.source.offset"]) == 0, "only the hostile record (offset 0) is dead-lettered"
        by_partition.setdefault(int(headers["dlq.source.partition"]), []).append(headers)
    outcome = {record.kind: _reasons(by_partition.get(p, [])) for p, record in enumerate(records)}
    expected = {record.kind: _expected(record) for record in records}
    mismatched = {k: (outcome[k], expected[k]) for k in KINDS if not _matches(outcome[k], expected[k])}
    assert mismatched == {}, f"(got, expected) per kind: {mismatched}"

    scored = sum(1 for record in records if record.expected is None) + len(records)  # + the good events
    assert agent.metric("anomaly_agent_events_processed_total") == scored
    assert agent.metric('anomaly_agent_events_dead_lettered_total{reason="internal_error"}') == 0
    assert agent.terminate() == 0, agent.tail()
    assert "Traceback" not in agent.log()

    # The header-name case: the dead letter says why the original headers are missing.
    unreadable = by_partition[KINDS.index("header_name_not_utf8_bad_value")][0]
    assert b"not valid UTF-8" in unreadable["dlq.headers.unreadable"]
    # The over-limit value was cut down to fit the dead-letter topic, and says so.
    too_large = by_partition[KINDS.index("value_2mb")][0]
    assert too_large["dlq.value.truncated"] == b"true" and int(too_large["dlq.value.bytes"]) > 2_000_000


def _reasons(headers: list[dict[str, bytes]]) -> Counter[str]:
    return Counter(h["dlq.reason"].decode() for h in headers)


def _expected(record: Hostile) -> str | None:
    if record.expected is None or record.expected == ANY_REASON:
        return record.expected
    return str(record.expected)


def _matches(got: Counter[str], expected: str | None) -> bool:
    if expected is None:
        return not got
    if expected == ANY_REASON:
        return sum(got.values()) == 1
    return got == Counter({expected: 1})
