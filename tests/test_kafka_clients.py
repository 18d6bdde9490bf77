"""The librdkafka configurations: the properties the delivery guarantees rest on always win."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError

from agent.config import load_settings
from agent.kafka_clients import consumer_config, overridden_keys, producer_config, transactional_id

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
