"""Poison input on the real broker: every kind of bad record, interleaved with good events.

Each bad record must land in the dead-letter topic with its original key, value and headers plus
the reason and source coordinates; every good event must be scored; nothing may block: the
group's committed offsets reach the end of the input (lag 0).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from agent_helpers import (
    AgentTopics,
    alert_sources,
    bgl_lines,
    offsets,
    pipeline_settings,
    produce,
    read_committed,
)
from kafka_fixtures import GroupFactory, TopicFactory

from agent.decode import DeadLetterReason
from agent.pipeline import Pipeline, load_model
from exporters.metrics import AgentMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


MAX_BYTES = 2048
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]

# format -> (bad value, the reason it must be dead-lettered with)
POISON: dict[str, list[tuple[bytes | None, DeadLetterReason]]] = {
    "json": [
        (b'{"text": "caf\xe9 \xff\xfe"}', DeadLetterReason.INVALID_UTF8),
        (b'{"text": "\\ud800 lone surrogate"}', DeadLetterReason.INVALID_UTF8),
        (b'{"text": "unterminated', DeadLetterReason.INVALID_JSON),
        (b"not json at all", DeadLetterReason.INVALID_JSON),
        (b'["text", "in an array"]', DeadLetterReason.NOT_AN_OBJECT),
        (b'"just a string"', DeadLetterReason.NOT_AN_OBJECT),
        (b'{"message": "text under another field"}', DeadLetterReason.MISSING_TEXT),
        (b'{"text": null}', DeadLetterReason.MISSING_TEXT),
        (b'{"text": {"nested": "object"}}', DeadLetterReason.MISSING_TEXT),
        (b'{"text": ""}', DeadLetterReason.EMPTY_TEXT),
        (b'{"text": " \\t\\n "}', DeadLetterReason.EMPTY_TEXT),
        (json.dumps({"text": "x" * (MAX_BYTES + 10)}).encode(), DeadLetterReason.TOO_LARGE),
        (None, DeadLetterReason.TOMBSTONE),
    ],
    "text": [
        (b"RAS KERNEL \xc3\x28 broken sequence", DeadLetterReason.INVALID_UTF8),
        (b"", DeadLetterReason.EMPTY_TEXT),
        (b"   \n", DeadLetterReason.EMPTY_TEXT),
        (b"y" * (MAX_BYTES + 1), DeadLetterReason.TOO_LARGE),
        (None, DeadLetterReason.TOMBSTONE),
    ],
}


@pytest.mark.parametrize("event_format", ["json", "text"])
def test_bad_records_are_dead_lettered_and_good_ones_processed(
    event_format: str,
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
) -> None:
    source, alerts_topic, dead_topic, group = make_topic(3), make_topic(1), make_topic(1), make_group()
    normal, _ = bgl_lines(datasets_dir)
    good_texts = normal[-60:]
    poison = POISON[event_format] * 2

    records: list[Record] = []
    expected_reason: dict[int, DeadLetterReason] = {}  # index in records -> reason
    pending = list(poison)
    for i, text in enumerate(good_texts):
        value = json.dumps({"text": text, "n": i}).encode() if event_format == "json" else text.encode()
        records.append((f"good-{i}".encode(), value, [("trace-id", f"good-{i}".encode())]))
        if i % 2 == 1 and pending:
            bad_value, reason = pending.pop(0)
            expected_reason[len(records)] = reason
            records.append((f"bad-{i}".encode(), bad_value, [("trace-id", f"bad-{i}".encode()), ("x", b"")]))
    assert len(expected_reason) == len(poison)

    positions = produce(kafka_bootstrap, source, records)
    index_at = {position: i for i, position in enumerate(positions)}

    settings = pipeline_settings(
        kafka_bootstrap,
        AgentTopics(source, alerts_topic, dead_topic, group),
        agent_bundle,
        instance_id="poison-agent",
        batch_size=16,
        events={"format": event_format, "text_field": "text", "max_bytes": MAX_BYTES},
    )
    metrics = AgentMetrics(batch_max_size=16)
    with Pipeline(settings, load_model(agent_bundle, intra_op_threads=1), metrics=metrics) as pipeline:
        stats = pipeline.run(max_messages=len(records), idle_timeout_s=60)

    assert stats.consumed == len(records)
    assert stats.processed == len(good_texts)
    assert stats.dead_lettered == len(poison)

    dead = read_committed(kafka_bootstrap, dead_topic)
    assert len(dead) == len(poison)
    seen: set[int] = set()
    for msg in dead:
        headers = msg.headers() or []
        named = dict(headers)
        position = (int(named["dlq.source.partition"]), int(named["dlq.source.offset"]))
        index = index_at[position]
        seen.add(index)
        key, value, original_headers = records[index]
        assert named["dlq.source.topic"] == source.encode()
        assert named["dlq.reason"] == expected_reason[index].value.encode(), named["dlq.detail"]
        assert named["dlq.detail"], "the detail header says what is wrong"
        assert named["dlq.agent"] == b"poison-agent"
        assert msg.key() == key
        assert msg.value() == value
        # The original headers come first, unchanged, then the agent's dlq.* headers.
        assert headers[: len(original_headers or [])] == original_headers
    assert seen == set(expected_reason), "every bad record is dead-lettered exactly once"

    good_positions = {p for i, p in enumerate(positions) if i not in expected_reason}
    assert set(alert_sources(read_committed(kafka_bootstrap, alerts_topic, quiet_s=0.5))) <= good_positions

    sample = metrics.registry.get_sample_value
    for reason, count in Counter(expected_reason.values()).items():
        assert sample("anomaly_agent_events_dead_lettered_total", {"reason": reason.value}) == count
    assert sample("anomaly_agent_events_processed_total") == len(good_texts)

    committed, ends = offsets(kafka_bootstrap, group, source)
    assert committed == ends, (
        "consumer lag is back to 0: committed offsets reached the end of every partition"
    )
