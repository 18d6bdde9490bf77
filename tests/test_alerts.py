"""build_alert: the value validates against docs/alert.schema.json, ids and keys are stable."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from jsonschema import Draft202012Validator, FormatChecker

from agent.model.textprep import TextPreparation
from exporters.alerts import (
    CLOUDEVENTS_TYPE,
    RATE_CLOUDEVENTS_TYPE,
    SCHEMA_VERSION,
    SUMMARY_CLOUDEVENTS_TYPE,
    AlertRecord,
    AlertSource,
    GroupInfo,
    PatternInfo,
    RateInfo,
    alert_id,
    build_alert,
    pattern_id,
    rate_alert_id,
    summary_id,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_PATH = DOCS / "alert.schema.json"
DETECTED = datetime(2026, 11, 22, 17, 49, 27, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def make(**overrides: Any) -> AlertRecord:
    kwargs: dict[str, Any] = {
        "source": AlertSource(
            topic="events", partition=2, offset=9041, key=b"order-17", timestamp_ms=1_763_833_767_000
        ),
        "text": "payment gateway timeout after 30000 ms for order 17",
        "score": 1.84,
        "threshold": 1.0,
        "detector": "kmeans",
        "cluster_id": 3,
        "cluster_label": "payments",
        "distance": 0.6624,
        "model_id": "shop-2026-11-22",
        "model_sha256": "c" * 64,
        "instance_id": "agent-a",
        "text_max_chars": 1000,
        "source_uri": "kafka-anomaly-agent/prod-eu",
        "fields": {"service": "checkout", "level": "ERROR", "latency_ms": 30000},
        "detected_at": DETECTED,
        "raw_threshold": 0.36,
    }
    kwargs.update(overrides)
    return build_alert(**kwargs)


def doc(record: AlertRecord) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(record.value.decode("utf-8"))
    return parsed


def test_value_has_every_documented_field(validator: Draft202012Validator) -> None:
    record = make()
    value = doc(record)
    validator.validate(value)
    assert value == {
        "schema_version": SCHEMA_VERSION,
        "id": record.id,
        "source": {
            "topic": "events",
            "partition": 2,
            "offset": 9041,
            "key": "order-17",
            "key_encoding": "utf-8",
            "timestamp": "2025-11-22T17:49:27.000Z",
            "timestamp_ms": 1_763_833_767_000,
        },
        "text": "payment gateway timeout after 30000 ms for order 17",
        "text_truncated": False,
        "text_length": 51,
        "score": 1.84,
        "threshold": 1.0,
        "raw_threshold": 0.36,
        "detector": "kmeans",
        "cluster": {"id": 3, "label": "payments"},
        "distance": 0.6624,
        "model": {"id": "shop-2026-11-22", "sha256": "c" * 64},
        "detected_at": "2026-11-22T17:49:27.123Z",
        "agent": "agent-a",
        "fields": {"service": "checkout", "level": "ERROR", "latency_ms": 30000},
        "kind": "alert",
        "pattern": {
            "id": pattern_id("shop-2026-11-22", "payment gateway timeout after 30000 ms for order 17"),
            "template": "payment gateway timeout after 30000 ms for order 17",
            "known": None,
            "first_seen": "2026-11-22T17:49:27.123Z",
        },
        "neighbours": [],
        "group": None,
        "rate": None,
        "session": None,
        "value": None,
    }


def test_schema_2_pattern_neighbours_and_group(validator: Draft202012Validator) -> None:
    first = DETECTED - timedelta(hours=3)
    record = make(
        prepared_text="payment gateway timeout after <NUM> ms for order <NUM>",
        pattern=PatternInfo(
            "ab" * 16, "payment gateway timeout after <NUM> ms for order <NUM>", False, first
        ),
        neighbours=[("payment gateway ok after <NUM> ms", 0.91234), ("payment retried", 0.8)],
        group=GroupInfo(600.0, DETECTED, DETECTED + timedelta(minutes=10), 0, 1.84),
    )
    value = doc(record)
    validator.validate(value)
    assert value["pattern"] == {
        "id": "ab" * 16,
        "template": "payment gateway timeout after <NUM> ms for order <NUM>",
        "known": False,
        "first_seen": "2026-11-22T14:49:27.123Z",
    }
    assert value["neighbours"] == [
        {"text": "payment gateway ok after <NUM> ms", "similarity": 0.91234},
        {"text": "payment retried", "similarity": 0.8},
    ]
    assert value["group"] == {
        "by": "pattern",
        "cooldown_seconds": 600.0,
        "window_start": "2026-11-22T17:49:27.123Z",
        "window_end": "2026-11-22T17:59:27.123Z",
        "suppressed": 0,
        "max_score": 1.84,
        "first": None,
        "last": None,
    }
    assert value["kind"] == "alert" and record.document == value


def test_a_summary_has_its_own_type_and_an_id_per_window(validator: Draft202012Validator) -> None:
    group = GroupInfo(
        600.0,
        DETECTED,
        DETECTED + timedelta(minutes=10),
        41,
        3.5,
        first=(9042, 1_763_833_768_000),
        last=(9100, None),
    )
    pattern = PatternInfo("cd" * 16, "disk <PATH> full", True, DETECTED)
    summary = make(pattern=pattern, group=group, summary=True, score=3.5)
    value = doc(summary)
    validator.validate(value)
    assert value["kind"] == "summary" and value["group"]["suppressed"] == 41
    assert value["group"]["first"] == {"offset": 9042, "timestamp": "2025-11-22T17:49:28.000Z"}
    assert value["group"]["last"] == {"offset": 9100, "timestamp": None}
    assert dict(summary.headers)["ce_type"] == SUMMARY_CLOUDEVENTS_TYPE.encode()
    assert summary.id == summary_id("events", 2, "cd" * 16, round(DETECTED.timestamp() * 1000))
    assert summary.id != make(pattern=pattern, group=group).id  # not the alert's id
    later = GroupInfo(600.0, DETECTED + timedelta(hours=1), DETECTED + timedelta(hours=2), 1, 1.2)
    assert make(pattern=pattern, group=later, summary=True).id != summary.id
    with pytest.raises(ValueError, match="give group"):
        make(summary=True)


def test_pattern_id_depends_on_model_and_template_only() -> None:
    assert pattern_id("m", "disk <PATH> full") == pattern_id("m", "disk <PATH> full")
    assert pattern_id("m", "disk <PATH> full") != pattern_id("m2", "disk <PATH> full")
    assert pattern_id("m", "a") != pattern_id("m", "b")
    # The recipe is a contract (feedback verdicts name patterns by it): sha256("m\0a")[:32].
    assert pattern_id("m", "a") == "3495f49bd0e64e1ce4282ded10d2568d"


def test_cloudevents_binary_mode_headers() -> None:
    record = make()
    headers = dict(record.headers)
    assert len(headers) == len(record.headers), "no header name repeats"
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": record.id.encode(),
        "ce_source": b"kafka-anomaly-agent/prod-eu",
        "ce_type": CLOUDEVENTS_TYPE.encode(),
        "ce_time": b"2026-11-22T17:49:27.123Z",
        "ce_subject": b"events/2/9041",
        "ce_partitionkey": record.key,
        "content-type": b"application/json",
    }


def test_id_is_a_uuid5_of_the_source_coordinates_and_stable_across_redelivery() -> None:
    first = make()
    redelivered = make(detected_at=DETECTED + timedelta(minutes=5), score=1.9, instance_id="agent-b")
    assert first.id == redelivered.id == alert_id("events", 2, 9041)
    assert uuid.UUID(first.id).version == 5
    assert uuid.UUID(first.id) == uuid.uuid5(
        uuid.uuid5(uuid.NAMESPACE_URL, "urn:kafka-anomaly-agent:alert"), "events/2/9041"
    )
    assert make(source=AlertSource("events", 2, 9042, None, None)).id != first.id
    assert make(source=AlertSource("events", 3, 9041, None, None)).id != first.id
    assert make(source=AlertSource("other", 2, 9041, None, None)).id != first.id


def test_key_groups_similar_alerts() -> None:
    template = "payment gateway timeout after <NUM> ms for order <NUM>"
    a = make(text="payment gateway timeout after 30000 ms for order 17", prepared_text=template)
    b = make(
        text="payment gateway timeout after 31000 ms for order 99",
        prepared_text=template,
        source=AlertSource("events", 0, 1, None, None),
    )
    assert a.key == b.key
    assert len(a.key) == 32 and all(c in b"0123456789abcdef" for c in a.key)
    assert make(prepared_text=template, cluster_id=4).key != a.key
    assert make(prepared_text=template, model_id="shop-2026-12-01").key != a.key
    assert make(prepared_text="disk full on <PATH>").key != a.key


def test_key_defaults_to_the_raw_text() -> None:
    assert make().key == make(prepared_text="payment gateway timeout after 30000 ms for order 17").key


def test_long_text_is_truncated_and_flagged(validator: Draft202012Validator) -> None:
    value = doc(make(text="é" * 40, text_max_chars=16))
    validator.validate(value)
    assert value["text"] == "é" * 16
    assert value["text_truncated"] is True
    assert value["text_length"] == 40


def test_binary_key_is_base64_and_missing_key_and_timestamp_are_null(validator: Draft202012Validator) -> None:
    value = doc(make(source=AlertSource("events", 0, 0, b"\xff\x00\xfe", None)))
    validator.validate(value)
    assert value["source"]["key"] == base64.b64encode(b"\xff\x00\xfe").decode()
    assert value["source"]["key_encoding"] == "base64"
    assert value["source"]["timestamp"] is None and value["source"]["timestamp_ms"] is None

    value = doc(make(source=AlertSource("events", 0, 0, None, -1)))
    validator.validate(value)
    assert value["source"]["key"] is None and value["source"]["key_encoding"] is None
    assert value["source"]["timestamp"] is None


def test_detector_without_clusters_and_numpy_scalars(validator: Draft202012Validator) -> None:
    """Scores arrive as numpy scalars from Detector.score; cluster -1 means "no cluster"."""
    value = doc(
        make(
            score=np.float64(2.5),
            cluster_id=np.int64(-1),
            cluster_label=None,
            distance=np.float64(0.9),
            raw_threshold=None,
        )
    )
    validator.validate(value)
    assert value["cluster"] == {"id": None, "label": None}
    assert value["score"] == 2.5 and value["raw_threshold"] is None
    assert doc(make(cluster_id=np.int64(7)))["cluster"]["id"] == 7


def test_non_finite_numbers_stay_valid_json(validator: Draft202012Validator) -> None:
    record = make(score=float("inf"), fields={"ratio": float("nan"), "nested": [float("-inf")]})
    value = json.loads(record.value, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    validator.validate(value)
    assert value["score"] > 1e300
    assert value["fields"] == {"ratio": "NaN", "nested": ["-Infinity"]}
    with pytest.raises(ValueError, match="NaN"):
        make(score=float("nan"))


def test_unpaired_surrogate_in_a_carried_field_is_escaped_not_lost() -> None:
    record = make(fields={"note": "bad \ud800 half"})
    assert doc(record)["fields"]["note"] == "bad \ud800 half"


def test_non_ascii_text_is_utf8_not_escaped() -> None:
    record = make(text="Zahlung fehlgeschlagen: Überweisung 🚫")
    assert "Überweisung 🚫".encode() in record.value


def test_detected_at_defaults_to_now_utc_and_is_normalised_to_utc() -> None:
    before = datetime.now(UTC)
    value = doc(make(detected_at=None))
    detected = datetime.fromisoformat(value["detected_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= detected <= datetime.now(UTC)

    cet = timezone(timedelta(hours=1))
    assert doc(make(detected_at=datetime(2026, 1, 1, 1, 0, tzinfo=cet)))["detected_at"] == (
        "2026-01-01T00:00:00.000Z"
    )
    with pytest.raises(ValueError, match="timezone"):
        make(detected_at=datetime(2026, 1, 1))


def test_schema_rejects_a_malformed_alert(validator: Draft202012Validator) -> None:
    """The schema is a real check: it refuses documents that break the contract."""
    good = doc(make())
    fields = (
        "id",
        "score",
        "source",
        "detected_at",
        "pattern",
        "kind",
        "neighbours",
        "group",
        "rate",
        "session",
    )
    for field in fields:
        broken = dict(good)
        del broken[field]
        assert not validator.is_valid(broken), field
    assert not validator.is_valid({**good, "schema_version": 1})
    assert not validator.is_valid({**good, "rate": {"kind": "burst"}})
    assert not validator.is_valid({**good, "kind": "digest"})
    assert not validator.is_valid({**good, "pattern": {**good["pattern"], "id": "x"}})
    assert not validator.is_valid({**good, "detected_at": "2026-11-22 17:49:27"})
    assert not validator.is_valid({**good, "id": "not-a-uuid"})


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.S | re.M)


def test_documented_example_is_what_build_alert_produces(validator: Draft202012Validator) -> None:
    """docs/alert-schema.md's example is real output (same inputs), and it validates."""
    markdown = (DOCS / "alert-schema.md").read_text()
    (example_json,) = fenced_blocks(markdown, "json")
    example = json.loads(example_json)
    validator.validate(example)
    text = "payment gateway timeout after 30000 ms for order 8f3e2c1a-77b0-4c1e-9d2a-5b6c7d8e9f00"
    record = build_alert(
        source=AlertSource("shop-events", 2, 918273, b"checkout-7f9c", 1795369767412),
        text=text,
        score=1.8412,
        threshold=1.0,
        detector="kmeans",
        cluster_id=3,
        cluster_label="payments",
        distance=0.5524,
        model_id="shop-2026-11-20",
        model_sha256="9b1f0c4e2a7d5e8f3c6b1a0d9e8f7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b",
        instance_id="agent-eu-1",
        text_max_chars=1000,
        source_uri="kafka-anomaly-agent/prod-eu",
        fields={"service": "checkout", "level": "ERROR", "region": "eu-west-1", "latency_ms": 30000},
        detected_at=datetime(2026, 11, 22, 17, 49, 27, 915000, tzinfo=UTC),
        prepared_text=TextPreparation().prepare(text),
        raw_threshold=0.3,
        pattern=PatternInfo(
            pattern_id("shop-2026-11-20", TextPreparation().prepare(text)),
            TextPreparation().prepare(text),
            False,
            datetime(2026, 11, 21, 9, 3, 11, 204000, tzinfo=UTC),
        ),
        neighbours=[
            ("payment gateway ok after <NUM> ms for order <UUID>", 0.8731),
            ("payment gateway retry <NUM> of <NUM> for order <UUID>", 0.8412),
            ("payment captured for order <UUID>", 0.7925),
        ],
        group=GroupInfo(
            600.0,
            datetime(2026, 11, 22, 17, 49, 27, 915000, tzinfo=UTC),
            datetime(2026, 11, 22, 17, 59, 27, 915000, tzinfo=UTC),
            0,
            1.8412,
        ),
    )
    assert doc(record) == example
    assert f"Key `{record.key.decode()}`" in markdown
    for name, header in record.headers:
        assert f"`{name}: {header.decode()}`" in markdown, name


def test_documented_consumer_snippet_compiles() -> None:
    (snippet,) = fenced_blocks((DOCS / "alert-schema.md").read_text(), "python")
    compile(snippet, "alert-schema.md consumer snippet", "exec")


@pytest.mark.integration
def test_alert_record_round_trips_through_a_transaction(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    validator: Draft202012Validator,
) -> None:
    """Produced as the agent does (transactionally), read as the documented subscriber reads."""
    topic = make_topic()
    record = make()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    headers: list[tuple[str, str | bytes | None]] = list(record.headers)  # produce() takes the wider type
    producer.produce(topic, key=record.key, value=record.value, headers=headers)
    producer.commit_transaction(30)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": make_group(),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while msg is None or msg.error() is not None:
            assert time.monotonic() < deadline, "alert not received"
            msg = consumer.poll(0.5)
    finally:
        consumer.close()
    value = msg.value()
    assert value is not None
    assert (msg.key(), value, msg.headers()) == (record.key, record.value, record.headers)
    validator.validate(json.loads(value))


def _record_size(record: AlertRecord) -> int:
    return len(record.key) + len(record.value) + sum(len(n.encode()) + len(v) + 4 for n, v in record.headers)


def test_an_alert_that_would_not_fit_kafka_drops_its_fields_then_shortens(
    validator: Draft202012Validator,
) -> None:
    """A valid event of ~900 kB scores anomalous: its alert carries the event's fields, and a
    record over the producer's/topic's limit could never be produced (its partition would stall).
    The alert is cut to fit and says so; it still validates against the schema."""
    small = make(fields={"service": "checkout"}, max_bytes=100_000)
    assert "fields_truncated" not in doc(small) and doc(small)["fields"] == {"service": "checkout"}

    big = make(fields={"pad": "x" * 900_000, "service": "checkout"}, max_bytes=100_000)
    value = doc(big)
    validator.validate(value)
    assert _record_size(big) <= 100_000
    assert value["fields"] == {} and value["fields_truncated"] is True
    assert value["text_truncated"] is False, "the text stays whole when dropping the fields is enough"

    huge_key = make(source=AlertSource("t", 0, 1, b"k" * 50_000, None), text="y" * 900, max_bytes=4_000)
    value = doc(huge_key)
    validator.validate(value)
    assert _record_size(huge_key) <= 4_000
    assert value["source"]["key_truncated"] is True and value["text_truncated"] is True


def test_rate_alerts_have_their_kind_type_id_and_rate(validator: Draft202012Validator) -> None:
    """Schema 3: a spike and a silence validate, carry ``rate``, and have ids that depend only on
    the decision's basis (a silence has no record of its own), distinct per kind."""
    basis = '{"bucket_start_ms":1795369740000,"key":["ab12",""],"kind":"spike","partition":2,"topic":"t"}'
    since = datetime(2026, 11, 21, tzinfo=UTC)
    documents = {}
    for kind, observed in (("spike", 412), ("silence", 0)):
        rate = RateInfo(
            kind=kind, observed=observed, expected=18.5, bucket_seconds=60.0,
            bucket_start=datetime(2026, 11, 22, 17, 49, tzinfo=UTC), buckets=1 if kind == "spike" else 7,
            threshold=61 if kind == "spike" else 7, score=3.2, baseline_since=since,
            key_fields={"service": "db"},
        )  # fmt: skip
        record = build_alert(
            source=AlertSource("t", 2, 99, None, 1795369767412), text="connection refused to db-1",
            score=3.2, threshold=1.0, detector="rates", cluster_id=None, cluster_label=None, distance=None,
            model_id="m", model_sha256="c" * 64, instance_id="a", text_max_chars=1000, source_uri="x",
            fields={}, prepared_text="connection refused to <HOST>", rate=rate, rate_basis=basis,
        )  # fmt: skip
        document = record.document
        validator.validate(document)
        assert document["kind"] == kind and document["rate"]["observed"] == observed
        assert document["rate"]["key_fields"] == {"service": "db"}
        assert dict(record.headers)["ce_type"] == RATE_CLOUDEVENTS_TYPE.encode()
        assert record.id == rate_alert_id(kind, basis) != alert_id("t", 2, 99)
        documents[kind] = document
    assert documents["spike"]["id"] != documents["silence"]["id"]
    with pytest.raises(ValueError, match="rate_basis"):
        build_alert(
            source=AlertSource("t", 2, 99, None, None), text="x", score=2.0, threshold=1.0, detector="rates",
            cluster_id=None, cluster_label=None, distance=None, model_id="m", model_sha256="c" * 64,
            instance_id="a", text_max_chars=10, source_uri="x", fields={}, rate=rate,
        )  # fmt: skip
