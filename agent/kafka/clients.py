"""librdkafka configurations for the agent's consumer and producer, derived from ``Settings``.

Kept apart from the loop so the properties that make the delivery guarantees hold are in one
short, reviewable place:

- the consumer never commits on its own (``enable.auto.commit=false``): offsets are committed
  by the loop, inside the producer's transaction (exactly-once) or after delivery reports
  (at-least-once), and it reads only committed data (``isolation.level=read_committed``);
- the exactly-once producer's ``transactional.id`` is stable per instance
  (``<group id>-<instance id>``), so an instance restarted after a crash fences its predecessor
  in ``init_transactions`` and the broker aborts the predecessor's open transaction at once
  (otherwise ``read_committed`` readers of the alert topic stall until ``transaction.timeout.ms``);
- the at-least-once producer is idempotent with ``acks=all``, so broker-side retries never
  duplicate a record;
- with static membership (``Settings.static_membership()``) the consumer joins with
  ``group.instance.id`` = ``instance_id``: a restarted instance takes its partitions back at once,
  without waiting for its predecessor's session to expire and without a rebalance;
- the producer never builds a request larger than the smallest output topic accepts
  (``batch.size``), so the broker cannot reject a batch of small records as too large.

The guarantee-bearing properties are applied after the ``kafka.librdkafka`` pass-through and win
over it; a pass-through value that tries to change one is reported by ``overridden_keys``.
Tunables with sensible defaults (``auto.offset.reset``, ``statistics.interval.ms``, the
prefetch bounds ``queued.min.messages``/``queued.max.messages.kbytes`` that keep a backlog from
inflating the consumer's memory, and the reconnect back-off) may be changed through the
pass-through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from agent.config import Delivery, Settings

# librdkafka statistics feed anomaly_agent_consumer_lag_messages and broker reachability.
DEFAULT_STATISTICS_INTERVAL_MS = 5_000
# Prefetch bounds. librdkafka's defaults (100,000 messages per partition, 64 MiB) let a consumer
# that starts behind a backlog buffer ~54 MiB of 200-byte events it will need minutes to embed;
# measured: +54 MiB RSS with the defaults, +13 MiB with these. With patterns 10,000 events are
# under a second of work, so the fetcher must refill quickly (DEFAULT_FETCH_QUEUE_BACKOFF_MS).
DEFAULT_QUEUED_MIN_MESSAGES = 10_000
DEFAULT_QUEUED_MAX_MESSAGES_KBYTES = 4_096
# How long a partition's next fetch waits once its queue is over those bounds: librdkafka's
# 1,000 ms let a fast loop (patterns: ~12,000 events/s) drain the queue and wait for data while
# the fetcher slept.
DEFAULT_FETCH_QUEUE_BACKOFF_MS = 20

# Reconnect back-off. librdkafka's default grows to 10 s between attempts, so a broker that is
# back after a restart may wait that long for the agent's next attempt; the broker restart tests
# measure recovery (broker accepting connections → next committed batch) against a 10 s target.
# One attempt per second per broker is negligible load.
DEFAULT_RECONNECT_BACKOFF_MS = 100
DEFAULT_RECONNECT_BACKOFF_MAX_MS = 1_000
# Room for Kafka's request framing under a topic's max.message.bytes.
BATCH_FRAMING_BYTES = 1_024

ErrorCallback = Callable[[KafkaError], None]
StatsCallback = Callable[[str], None]


def transactional_id(group_id: str, instance_id: str) -> str:
    """The exactly-once producer's ``transactional.id``: the same for every run of one instance."""
    return f"{group_id}-{instance_id}"


def _consumer_fixed(settings: Settings) -> dict[str, Any]:
    fixed: dict[str, Any] = {
        "group.id": settings.kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.kafka.session_timeout_ms,
        "max.poll.interval.ms": settings.kafka.max_poll_interval_ms,
    }
    if settings.static_membership():
        fixed["group.instance.id"] = settings.instance_id
    return fixed


def _shared_defaults(conf: dict[str, Any]) -> None:
    conf.setdefault("reconnect.backoff.ms", DEFAULT_RECONNECT_BACKOFF_MS)
    conf.setdefault("reconnect.backoff.max.ms", DEFAULT_RECONNECT_BACKOFF_MAX_MS)


def _producer_fixed(settings: Settings) -> dict[str, Any]:
    fixed: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
    if settings.delivery is Delivery.EXACTLY_ONCE:
        fixed["transactional.id"] = transactional_id(settings.kafka.group_id, settings.instance_id)
        fixed["transaction.timeout.ms"] = settings.kafka.transaction_timeout_ms
    return fixed


def consumer_config(
    settings: Settings,
    *,
    error_cb: ErrorCallback,
    stats_cb: StatsCallback,
    logger: logging.Logger,
) -> dict[str, Any]:
    """The consumer's configuration: shared client settings, pass-through, then the fixed keys."""
    conf = settings.kafka.client_config()
    _shared_defaults(conf)
    conf.setdefault("auto.offset.reset", "earliest")
    conf.setdefault("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS)
    conf.setdefault("queued.min.messages", DEFAULT_QUEUED_MIN_MESSAGES)
    conf.setdefault("queued.max.messages.kbytes", DEFAULT_QUEUED_MAX_MESSAGES_KBYTES)
    conf.setdefault("fetch.queue.backoff.ms", DEFAULT_FETCH_QUEUE_BACKOFF_MS)
    conf.update(_consumer_fixed(settings))
    conf.update({"error_cb": error_cb, "stats_cb": stats_cb, "logger": logger})
    return conf


def producer_config(
    settings: Settings,
    *,
    error_cb: ErrorCallback,
    logger: logging.Logger,
    topic_max_bytes: int | None = None,
) -> dict[str, Any]:
    """The producer's configuration: transactional for exactly-once, idempotent for at-least-once.

    ``topic_max_bytes``: the smallest ``max.message.bytes`` of the output topics, when known;
    ``batch.size`` stays below it (and below librdkafka's default) unless set explicitly.
    """
    conf = settings.kafka.client_config()
    _shared_defaults(conf)
    conf.setdefault("message.max.bytes", settings.producer_message_max_bytes())
    if topic_max_bytes is not None:
        conf.setdefault("batch.size", max(1, min(1_000_000, topic_max_bytes - BATCH_FRAMING_BYTES)))
    # Statistics are only read from the consumer; don't make the producer compute them.
    conf.pop("statistics.interval.ms", None)
    conf.update(_producer_fixed(settings))
    conf.update({"error_cb": error_cb, "logger": logger})
    return conf


def overridden_keys(settings: Settings) -> list[str]:
    """Pass-through keys (``kafka.librdkafka``) that the agent replaces to keep its guarantees."""
    fixed = _consumer_fixed(settings) | _producer_fixed(settings)
    return sorted(key for key in settings.kafka.librdkafka if key in fixed)
