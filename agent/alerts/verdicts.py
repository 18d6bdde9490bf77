"""The feedback topic, read by every instance: operators' verdicts kept current in ``Verdicts``.

Every instance reads the whole (compacted) feedback topic — verdicts are about patterns, not
partitions — from its beginning at start-up, **before** the first batch, so a pattern muted
yesterday stays muted after a restart; then a daemon thread follows the topic, so a verdict
written now takes effect within about a second on every instance. The loop only asks
``Verdicts.is_muted`` (a dictionary lookup under a lock); nothing here blocks it.

A malformed record (not a verdict, see ``agent.alerts.feedback``) is skipped, logged once per record
and counted in ``anomaly_agent_feedback_invalid_total``; it never stops the reader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from agent.alerts.feedback import FeedbackError, Verdicts
from agent.config import ConfigError, Settings
from agent.kafka.calls import CALL_TIMEOUT_S, ClientCalls
from exporters.metrics import AgentMetrics

__all__ = ["VerdictReader"]

log = logging.getLogger(__name__)

READ_SLICE_S = 0.5
# The start-up read gives up after this long and the agent goes on (verdicts then arrive late):
# a slow feedback topic must not keep the agent from scoring.
CATCH_UP_LIMIT_S = 60.0


class VerdictReader:
    """Follows ``topics.feedback`` into ``verdicts``. ``start`` returns once the topic was read to
    its end (or ``CATCH_UP_LIMIT_S`` passed); ``close`` stops the thread."""

    def __init__(
        self,
        settings: Settings,
        verdicts: Verdicts,
        *,
        metrics: AgentMetrics,
        kafka_log: logging.Logger,
    ) -> None:
        assert settings.topics.feedback is not None, "VerdictReader needs topics.feedback"
        self._settings = settings
        self._topic = settings.topics.feedback
        self.verdicts = verdicts
        self._metrics = metrics
        self._kafka_log = kafka_log
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._calls = ClientCalls("feedback")

    def start(self, tick: Callable[[], None]) -> None:
        """Read the topic to its end, then keep following it. ConfigError when it does not exist."""
        if self._thread is not None:
            return
        conf = self._settings.kafka.client_config()
        conf.update(
            {
                # The agent's own group (its READ ACL covers the coordinator lookup); never
                # joined (assign() only), never committed.
                "group.id": self._settings.kafka.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": self._kafka_log,
            }
        )
        consumer = self._consumer = Consumer(conf)
        metadata = self._calls.call(
            "list_topics",
            lambda: consumer.list_topics(self._topic, timeout=CALL_TIMEOUT_S),
            timeout_s=CALL_TIMEOUT_S,
            tick=tick,
        )
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ConfigError(
                f"the feedback topic {self._topic} (topics.feedback) does not exist; create it with "
                "cleanup.policy=compact, or remove topics.feedback"
            )
        partitions = sorted(topic.partitions)
        consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
        self._thread = threading.Thread(
            target=self._follow, args=(consumer, set(partitions)), name="feedback-reader", daemon=True
        )
        self._thread.start()
        give_up = time.monotonic() + CATCH_UP_LIMIT_S
        while not self._caught_up.wait(0.2):
            tick()
            if time.monotonic() > give_up or not self._thread.is_alive():
                log.warning(
                    "the feedback topic %s was not read to its end within %.0f s; going on, verdicts "
                    "apply as they arrive",
                    self._topic,
                    CATCH_UP_LIMIT_S,
                )
                break
        log.info("feedback topic %s read: %d pattern(s) muted", self._topic, len(self.verdicts.muted()))

    def close(self, timeout_s: float) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        consumer, self._consumer = self._consumer, None
        if consumer is not None and (thread is None or not thread.is_alive()):
            self._calls.close("close", consumer.close, consumer, timeout_s=timeout_s)

    def _follow(self, consumer: Consumer, pending: set[int]) -> None:
        while not self._stop.is_set():
            try:
                messages = consumer.consume(500, READ_SLICE_S)
            except Exception:  # a closed or broken client: the thread ends, the agent goes on
                log.exception("feedback reader stopped")
                return
            for msg in messages:
                error = msg.error()
                if error is None:
                    self._apply(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                    if not pending:
                        self._caught_up.set()
                else:
                    log.debug("feedback reader: %s", error)
            self._metrics.patterns_muted.set(len(self.verdicts.muted()))

    def _apply(self, msg: Message) -> None:
        try:
            self.verdicts.apply(msg.key(), msg.value())
        except FeedbackError as exc:
            self._metrics.feedback_invalid.inc()
            log.warning(
                "feedback record %s[%s] offset %s skipped: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                exc,
            )
