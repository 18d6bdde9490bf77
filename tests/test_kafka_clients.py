"""The librdkafka configurations: the properties the delivery guarantees rest on always win."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError

from agent.config import load_settings
from agent.kafka.clients import consumer_config, overridden_keys, producer_config, transactional_id

LOG = logging.getLogger("test")


def _ignore_error(error: KafkaError) -> None:
    LOG.debug("%s", error)


def _ignore_stats(stats: str) -> None:
    LOG.debug("%s", stats)


def test_exactly_once_consumer_and_producer() -> None:
    settings = load_settings(instance_id="pod-3", kafka={"group_id": "g", "transaction_timeout_ms": 15_000})
    consumer = consumer_config(settings, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)
    producer = producer_config(settings, error_cb=_ignore_error, logger=LOG)
    assert consumer["group.id"] == "g"
    assert consumer["enable.auto.commit"] is False
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["stats_cb"] is _ignore_stats
    assert producer["transactional.id"] == "g-pod-3" == transactional_id("g", "pod-3")
    assert producer["transaction.timeout.ms"] == 15_000
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert "statistics.interval.ms" not in producer


def test_at_least_once_producer_is_idempotent_without_transactions() -> None:
    settings = load_settings(delivery="at_least_once")
    producer = producer_config(settings, error_cb=_ignore_error, logger=LOG)
    assert "transactional.id" not in producer
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"


def test_pass_through_cannot_weaken_the_guarantees_but_tunes_the_rest() -> None:
    settings = load_settings(
        kafka={
            "librdkafka": {
                "enable.auto.commit": True,
                "isolation.level": "read_uncommitted",
                "transactional.id": "shared",
                "auto.offset.reset": "latest",
                "statistics.interval.ms": 1000,
                "socket.keepalive.enable": True,
            }
        }
    )
    consumer = consumer_config(settings, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)
    producer = producer_config(settings, error_cb=_ignore_error, logger=LOG)
    assert consumer["enable.auto.commit"] is False
    assert consumer["isolation.level"] == "read_committed"
    assert producer["transactional.id"] == transactional_id(settings.kafka.group_id, settings.instance_id)
    assert consumer["auto.offset.reset"] == "latest"
    assert consumer["statistics.interval.ms"] == 1000
    assert consumer["socket.keepalive.enable"] is True and producer["socket.keepalive.enable"] is True
    assert overridden_keys(settings) == ["enable.auto.commit", "isolation.level", "transactional.id"]


def test_static_membership_follows_an_explicit_instance_id() -> None:
    """group.instance.id only when the instance id was chosen (a StatefulSet pod name, a systemd
    instance): the host-name default may be shared or change, and two members with one static id
    fence each other."""
    explicit = load_settings(instance_id="anomaly-agent-2")
    assert explicit.static_membership()
    consumer = consumer_config(explicit, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)
    assert consumer["group.instance.id"] == "anomaly-agent-2"

    defaulted = load_settings()
    assert not defaulted.static_membership()
    assert "group.instance.id" not in consumer_config(
        defaulted, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG
    )
    off = load_settings(instance_id="a", kafka={"static_membership": False})
    assert "group.instance.id" not in consumer_config(
        off, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG
    )
    on = load_settings(kafka={"static_membership": True})
    assert consumer_config(on, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)[
        "group.instance.id"
    ] == (on.instance_id)


def test_producer_limits_fit_the_largest_accepted_record_and_the_smallest_topic() -> None:
    default = load_settings()
    producer = producer_config(default, error_cb=_ignore_error, logger=LOG, topic_max_bytes=200_000)
    assert producer["message.max.bytes"] == 1_000_000, "librdkafka's default still fits 960 KiB + headroom"
    assert producer["batch.size"] < 200_000, "a batch of small records must not exceed the topic's limit"
    big = load_settings(events={"max_bytes": 1_048_576})
    assert producer_config(big, error_cb=_ignore_error, logger=LOG)["message.max.bytes"] == 1_048_576 + 16_384
    assert "batch.size" not in producer_config(big, error_cb=_ignore_error, logger=LOG)
    assert producer_config(default, error_cb=_ignore_error, logger=LOG)["reconnect.backoff.max.ms"] == 1_000


def test_the_fetcher_keeps_a_fast_loop_fed_unless_told_otherwise() -> None:
    """A partition over its prefetch bounds is fetched again after 20 ms, not librdkafka's 1 s
    (the loop drains 10,000 queued records in under a second with patterns)."""
    default = consumer_config(load_settings(), error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)
    assert default["fetch.queue.backoff.ms"] == 20
    assert default["queued.min.messages"] == 10_000 and default["queued.max.messages.kbytes"] == 4_096
    tuned = load_settings(kafka={"librdkafka": {"fetch.queue.backoff.ms": 500}})
    assert (
        consumer_config(tuned, error_cb=_ignore_error, stats_cb=_ignore_stats, logger=LOG)[
            "fetch.queue.backoff.ms"
        ]
        == 500
    )
