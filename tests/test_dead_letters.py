"""The dead-letter copy: original bytes plus dlq.* headers, cut down to fit Kafka's size limits,
and header names that confluent-kafka cannot decode (read once, never twice: the second read
returns a list holding a NULL and crashes the process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer
from raw_producer import produce_raw

from agent.decode import DeadLetterReason, Rejected, decode_event
from exporters.dead_letters import (
    DETAIL_MAX_CHARS,
    OriginalHeaders,
    build_dead_letter,
    dead_letter_headers,
    normalise_headers,
    read_headers,
    record_size,
)

OURS = dead_letter_headers(
    reason=DeadLetterReason.TOO_LARGE, detail="value is big", topic="events", partition=3, offset=12345
)


def test_headers_keep_originals_first_and_append_ours() -> None:
    original = normalise_headers([("traceparent", b"00-abc-def-01"), ("empty", None), ("as-str", "v")])
    ours = dead_letter_headers(
        reason=DeadLetterReason.INVALID_JSON,
        detail="Expecting value at line 1 column 1",
        topic="events",
        partition=3,
        offset=12345,
        instance_id="agent-7",
    )
    copy = build_dead_letter(
        key=b"k", value=b"{", original=OriginalHeaders(original), ours=ours, max_bytes=10_000
    )
    assert (copy.key, copy.value) == (b"k", b"{")
    assert copy.headers == [
        ("traceparent", b"00-abc-def-01"),
        ("empty", b""),
        ("as-str", b"v"),
        ("dlq.reason", b"invalid_json"),
        ("dlq.detail", b"Expecting value at line 1 column 1"),
        ("dlq.source.topic", b"events"),
        ("dlq.source.partition", b"3"),
        ("dlq.source.offset", b"12345"),
        ("dlq.agent", b"agent-7"),
    ]


def test_detail_is_bounded_and_agent_optional() -> None:
    headers = dict(
        dead_letter_headers(
            reason=DeadLetterReason.MISSING_TEXT, detail="é" * 5000, topic="t", partition=0, offset=0
        )
    )
    assert len(headers["dlq.detail"].decode("utf-8")) == DETAIL_MAX_CHARS
    assert "dlq.agent" not in headers


def test_an_oversized_value_is_cut_to_fit_and_says_so() -> None:
    value = b"v" * 2_000_000
    original = OriginalHeaders([("trace", b"t")])
    copy = build_dead_letter(key=b"key", value=value, original=original, ours=OURS, max_bytes=100_000)
    assert record_size(copy.key, copy.value, copy.headers) <= 100_000
    assert copy.value is not None and value.startswith(copy.value) and len(copy.value) > 99_000
    headers = dict(copy.headers)
    assert headers["dlq.value.bytes"] == b"2000000" and headers["dlq.value.truncated"] == b"true"
    assert headers["trace"] == b"t" and copy.key == b"key", "key and headers kept while they fit"


def test_huge_headers_and_key_are_dropped_then_cut() -> None:
    original = OriginalHeaders([(f"h{i}", b"x" * 10_000) for i in range(20)])
    copy = build_dead_letter(
        key=b"k" * 300_000, value=b"v" * 10, original=original, ours=OURS, max_bytes=50_000
    )
    assert record_size(copy.key, copy.value, copy.headers) <= 50_000
    headers = dict(copy.headers)
    assert headers["dlq.headers.dropped"] == b"20" and headers["dlq.key.bytes"] == b"300000"
    assert headers["dlq.source.offset"] == b"12345", "the source coordinates always stay"
    assert not any(name.startswith("h") for name, _ in copy.headers)


def test_a_tombstone_stays_a_tombstone() -> None:
    copy = build_dead_letter(key=None, value=None, original=OriginalHeaders([]), ours=OURS, max_bytes=10_000)
    assert copy.value is None and copy.key is None


def test_unreadable_header_names_are_reported_in_a_header() -> None:
    original = OriginalHeaders([], "SystemError: header names are not valid UTF-8")
    copy = build_dead_letter(key=b"k", value=b"v", original=original, ours=OURS, max_bytes=10_000)
    assert dict(copy.headers)["dlq.headers.unreadable"].startswith(b"SystemError")


def _read_one(bootstrap: str, topic: str, group: str) -> Message:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while msg is None or msg.error() is not None:
            assert time.monotonic() < deadline, f"nothing received on {topic}"
            msg = consumer.poll(0.5)
        return msg
    finally:
        consumer.close()


@pytest.mark.integration
def test_dead_letter_copy_round_trips_through_kafka(
    kafka_bootstrap: str, make_topic: Callable[..., str], make_group: Callable[[], str]
) -> None:
    """Original key/value bytes and headers (a null-valued one included) survive the copy."""
    source_topic, dlq_topic = make_topic(), make_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        source_topic, key=b"k1", value=b"\xff not utf-8", headers=[("trace", b"t-1"), ("flag", None)]
    )
    assert producer.flush(30) == 0

    original = _read_one(kafka_bootstrap, source_topic, make_group())
    result = decode_event(
        original.value(),
        format="json",
        text_field="text",
        max_bytes=1024,
        timestamp_ms=None,  # type: ignore[arg-type]
    )
    assert isinstance(result, Rejected)
    ours = dead_letter_headers(
        reason=result.reason,
        detail=result.detail,
        topic=source_topic,
        partition=0,
        offset=0,
        instance_id="agent-it",
    )
    copy = build_dead_letter(
        key=original.key(),
        value=original.value(),
        original=read_headers(original),
        ours=ours,
        max_bytes=100_000,
    )
    outgoing: list[tuple[str, Any]] = list(copy.headers)
    producer.produce(dlq_topic, key=copy.key, value=copy.value, headers=outgoing)
    assert producer.flush(30) == 0

    received = _read_one(kafka_bootstrap, dlq_topic, make_group())
    assert (received.key(), received.value()) == (b"k1", b"\xff not utf-8")
    headers = received.headers()
    assert headers is not None and headers[:2] == [("trace", b"t-1"), ("flag", b"")]
    assert dict(headers[2:]) == {
        "dlq.reason": b"invalid_utf8",
        "dlq.detail": result.detail.encode(),
        "dlq.source.topic": source_topic.encode(),
        "dlq.source.partition": b"0",
        "dlq.source.offset": b"0",
        "dlq.agent": b"agent-it",
    }


@pytest.mark.integration
def test_header_names_that_are_not_utf8_are_read_once_without_crashing(
    kafka_bootstrap: str, make_topic: Callable[..., str], make_group: Callable[[], str]
) -> None:
    """The exact bytes of the crash: headers named b"\xff\xfe" and b"\xc3\x28".
    confluent-kafka's ``Message.headers()`` returns a list holding a NULL with the decode error
    still pending; once CPython has specialised a plain ``msg.headers()`` call site (after a few
    calls) nothing checks that, and the error escapes later or the NULL is touched (SIGSEGV).
    ``read_headers`` must report the problem for every one of many such records, and leave no
    pending exception behind (the isinstance/dict calls after it would raise one)."""
    topic = make_topic()
    names = [b"\xff\xfe", b"\xc3\x28"]
    produce_raw(
        kafka_bootstrap,
        topic,
        [(b"k", b'{"text": "fine"}', [(names[i % 2], b"x"), (b"ok", b"y")]) for i in range(40)],
    )
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": make_group(), "auto.offset.reset": "earliest"}
    )
    try:
        consumer.subscribe([topic])
        messages: list[Message] = []
        deadline = time.monotonic() + 30
        while len(messages) < 40:
            assert time.monotonic() < deadline, f"received {len(messages)} of 40"
            messages += [m for m in consumer.consume(40, 0.5) if m.error() is None]
    finally:
        consumer.close()
    for msg in messages:
        original = read_headers(msg)
        assert isinstance(original.headers, list) and dict(original.headers) == {}
        assert original.problem is not None and "UTF-8" in original.problem
        assert (msg.key(), msg.value()) == (b"k", b'{"text": "fine"}'), "key and value stay readable"
