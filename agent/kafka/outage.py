"""Broker reachability: when the brokers count as down, readiness, and the exit after a long outage;
and refusals (a missing ACL, bad credentials), which no retry can fix.

librdkafka reports ``_ALL_BROKERS_DOWN`` through the clients' ``error_cb`` and reconnects by
itself. The brokers count as reachable again when librdkafka statistics show a broker ``UP``, a
record arrives, or a commit succeeds. After ``limit_s`` of continuous outage ``check`` raises
``BrokerUnavailableError`` (limit 0 = retry forever); the runner exits 69 on it.
"""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import KafkaError

from agent.health import HealthState
from agent.kafka.permissions import KafkaPermissionError, Permissions

log = logging.getLogger("agent.pipeline")


class BrokerUnavailableError(Exception):
    """The brokers stayed unreachable longer than ``lifecycle.broker_unavailable_exit_seconds``."""


class BrokerWatch:
    """Tracks the outage state that the consumer's and the producer's callbacks report.

    ``outages`` counts outages so far: a client created before the last one began has lived
    through it (see ``agent.kafka.delivery``: such a producer is replaced before its next transaction).

    Callbacks run on whatever thread serves the client (the loop, or a call's own thread); the
    state is a single timestamp, written and read whole.
    """

    def __init__(
        self, bootstrap_servers: str, limit_s: float, health: HealthState, permissions: Permissions
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._limit = limit_s
        self._health = health
        self._permissions = permissions
        self._unreachable_since: float | None = None
        self._refused: KafkaPermissionError | None = None
        self.outages = 0

    def refusal(self, error: KafkaError, action: str, topic: str | None = None) -> bool:
        """True when ``error`` is Kafka refusing the agent (authentication or authorization); the
        first one is kept and raised by the next ``check``: retrying cannot fix a missing ACL."""
        refused = self._permissions.explain(error, action=action, topic=topic)
        if refused is None:
            return False
        if self._refused is None:
            self._refused = refused
            log.error("%s", refused)
        return True

    def client_error(self, error: KafkaError) -> None:
        """An error callback for clients with nothing else to report (the start-up admin client)."""
        if not self.refusal(error, "checking the output topics"):
            self.connection_error(error)

    @property
    def reachable(self) -> bool:
        return self._unreachable_since is None

    def connection_error(self, error: KafkaError) -> bool:
        """True when ``error`` is connection trouble (handled here: librdkafka retries by itself and
        logs each attempt through the ``librdkafka`` logger, so only an outage's start is logged)."""
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                self.outages += 1
                self._health.set_broker_reachable(False)
                log.warning(
                    "no Kafka broker reachable (%s); retrying, not ready%s",
                    error.str(),
                    f", exiting after {self._limit:g} s" if self._limit > 0 else "",
                )
            return True
        return code in (KafkaError._TRANSPORT, KafkaError._RESOLVE)

    def mark_reachable(self) -> None:
        since = self._unreachable_since
        if since is not None:
            log.info("Kafka brokers reachable again after %.1f s", time.monotonic() - since)
            self._unreachable_since = None
        self._health.set_broker_reachable(True)

    def check(self) -> None:
        """Raise a refusal seen by any client (``KafkaPermissionError``), or
        ``BrokerUnavailableError`` once the outage lasted ``limit_s``."""
        if self._refused is not None:
            raise self._refused
        since = self._unreachable_since
        if self._limit > 0 and since is not None and time.monotonic() - since >= self._limit:
            raise BrokerUnavailableError(
                f"no Kafka broker reachable at {self._bootstrap} for {time.monotonic() - since:.0f} s "
                f"(lifecycle.broker_unavailable_exit_seconds = {self._limit:g})"
            )

    def observe_stats(self, stats: dict[str, object]) -> None:
        """A broker ``UP`` in librdkafka statistics means reachable."""
        brokers = stats.get("brokers")
        if isinstance(brokers, dict) and any(
            isinstance(b, dict) and b.get("state") == "UP" and int(b.get("nodeid", -1)) >= 0
            for b in brokers.values()
        ):
            self.mark_reachable()


def parse_stats(stats_json: str) -> dict[str, object] | None:
    """librdkafka statistics as a dict, or None (logged) when unreadable."""
    try:
        stats = json.loads(stats_json)
    except ValueError as exc:
        log.warning("unreadable librdkafka statistics: %s", exc)
        return None
    return stats if isinstance(stats, dict) else None
