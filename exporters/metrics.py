"""The agent's Prometheus metrics: names, units, buckets and label sets in one place.

Names follow the Prometheus naming guide: prefix ``anomaly_agent_``, base units (seconds,
messages), ``_total`` on counters, and only bounded labels (a closed enum, or the partitions this
consumer is assigned). The names are a contract with dashboards and alert rules (issue 4): add,
never rename. docs/metrics.md lists every series with example PromQL.

Each ``AgentMetrics`` owns a private ``CollectorRegistry`` unless one is passed in, so tests and
several agents in one process never collide on the global default registry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agent import __version__
from agent.decode import DeadLetterReason

log = logging.getLogger(__name__)

# Dense around the decision threshold 1.0 (score = raw / calibrated threshold), so the share of
# events just below / just above it — the ones a threshold change would flip — is visible.
SCORE_BUCKETS = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
# 100 µs (decoding a small batch) to 10 s (embedding a large batch on a busy CPU).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)  # fmt: skip
# 1 ms (live traffic) to 1 h (catching up on a backlog after downtime).
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
               1800.0, 3600.0)  # fmt: skip


class Stage(StrEnum):
    """The loop's stages, the ``stage`` label of ``anomaly_agent_stage_duration_seconds``."""

    DECODE = "decode"
    EMBED = "embed"
    SCORE = "score"
    PUBLISH = "publish"
    COMMIT = "commit"


class LookupResult(StrEnum):
    """The ``result`` label of ``anomaly_agent_pattern_lookups_total``."""

    HIT = "hit"
    MISS = "miss"


class RateKind(StrEnum):
    """The ``kind`` label of ``anomaly_agent_rate_alerts_total``."""

    SPIKE = "spike"
    SILENCE = "silence"


class SessionCloseReason(StrEnum):
    """The ``reason`` label of ``anomaly_agent_sessions_closed_total`` (``agent.model.sessions.REASONS``
    but offline's end of input)."""

    GAP = "gap"
    MAX_SECONDS = "max_seconds"
    MAX_EVENTS = "max_events"
    EVICTED = "evicted"


class ReloadResult(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class TransactionResult(StrEnum):
    COMMITTED = "committed"
    ABORTED = "aborted"


class KafkaCall(StrEnum):
    """Blocking librdkafka calls that run under a deadline (``agent.kafka.calls``): the ``call``
    label of ``anomaly_agent_kafka_calls_hung_total``."""

    INIT_TRANSACTIONS = "init_transactions"
    SEND_OFFSETS_TO_TRANSACTION = "send_offsets_to_transaction"
    COMMIT_TRANSACTION = "commit_transaction"
    ABORT_TRANSACTION = "abort_transaction"
    FLUSH = "flush"
    COMMITTED = "committed"
    COMMIT = "commit"
    LIST_TOPICS = "list_topics"
    CLOSE = "close"


class ReplaceReason(StrEnum):
    """Why the producer was replaced: the ``reason`` label of ``anomaly_agent_producers_replaced_total``."""

    FATAL = "fatal"
    HUNG = "hung"
    OUTAGE = "outage"


def batch_buckets(max_size: int) -> tuple[float, ...]:
    """Powers of two below ``max_size`` and ``max_size`` itself: 1, 2, 4, ..., 32, 64 for 64."""
    if max_size < 1:
        raise ValueError(f"batch max size must be >= 1, got {max_size}")
    buckets: list[float] = []
    size = 1
    while size < max_size:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(max_size))
    return tuple(buckets)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, in one pass per bucket instead of one call per value.

    At 10,000+ events/s the per-event ``observe`` calls (a lock and a bucket scan each) cost more
    than scoring a pattern-table hit. This counts the values per bucket with numpy and adds each
    bucket's count once. It uses prometheus-client's internals (``_upper_bounds``, ``_buckets``,
    ``_sum``, as ``Histogram.observe`` does); a unit test holds it equal to per-value ``observe``,
    so a client upgrade that changes them fails the suite instead of the metrics. Only for
    histograms without labels (a labelled parent has no buckets of its own).
    """
    if not len(values):
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    # observe puts v in the first bucket with v <= bound; NaN fits none (index len(bounds)).
    per_bucket = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    histogram._sum.inc(float(values.sum()))
    for bucket, n in zip(histogram._buckets, per_bucket[: len(bounds)].tolist(), strict=True):
        if n:
            bucket.inc(n)


def _timestamp(moment: datetime | str | None) -> float | None:
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            log.warning("model created_at %r is not ISO 8601; model age metric omitted", moment)
            return None
    if moment is None or moment.tzinfo is None:
        return None
    return moment.timestamp()


class AgentMetrics:
    """Every series the agent exports, pre-initialised so each one exists (at 0) from start-up.

    Pre-initialising matters for alerting: ``rate(x[5m])`` over a series that appears only on the
    first dead letter cannot tell "none yet" from "not scraped".

    ``batch_max_size`` (``batch.max_size``) sets the top ``batch_size`` bucket so the histogram
    resolves exactly the range the loop can produce.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, batch_max_size: int = 1024) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "anomaly_agent_events_consumed_total",
            "Records read from the input topics (including ones later dead-lettered).",
            registry=r,
        )
        self.events_processed = Counter(
            "anomaly_agent_events_processed_total",
            "Events decoded, embedded and scored.",
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "anomaly_agent_events_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.alerts_published = Counter(
            "anomaly_agent_alerts_published_total",
            "Alerts produced to the alert topic (score > 1.0).",
            registry=r,
        )
        self.anomaly_score = Histogram(
            "anomaly_agent_anomaly_score",
            "Anomaly score per event: raw measure / calibrated threshold; > 1.0 is anomalous.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "anomaly_agent_batch_size",
            "Events scored per batch.",
            buckets=batch_buckets(batch_max_size),
            registry=r,
        )
        self.stage_duration = Histogram(
            "anomaly_agent_stage_duration_seconds",
            "Wall time per batch spent in each loop stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            "anomaly_agent_event_lag_seconds",
            "Time from the record's Kafka timestamp to its scoring (end-to-end freshness).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "anomaly_agent_consumer_lag_messages",
            "Messages behind the partition's high watermark, per assigned partition (librdkafka stats).",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "anomaly_agent_model_info",
            "The model bundle in use (value 1; exactly one label set at a time).",
            ["model_id", "sha256", "detector"],
            registry=r,
        )
        self.model_created = Gauge(
            "anomaly_agent_model_created_timestamp_seconds",
            "Unix time the model bundle in use was trained (manifest created_at); absent when unknown.",
            ["model_id"],
            registry=r,
        )
        self.last_processed = Gauge(
            "anomaly_agent_last_processed_timestamp_seconds",
            "Unix time the last batch was scored.",
            registry=r,
        )
        self.reloads = Counter(
            "anomaly_agent_reloads_total",
            "Model hot reloads by result.",
            ["result"],
            registry=r,
        )
        self.transactions = Counter(
            "anomaly_agent_transactions_total",
            "Kafka transactions (exactly-once delivery) by result.",
            ["result"],
            registry=r,
        )
        self.pattern_lookups = Counter(
            "anomaly_agent_pattern_lookups_total",
            "Events looked up in the pattern table: hit = scored from the table, miss = its pattern "
            "was embedded and scored.",
            ["result"],
            registry=r,
        )
        self.pattern_evictions = Counter(
            "anomaly_agent_pattern_evictions_total",
            "Patterns evicted from the table (least recently used beyond patterns.max_entries).",
            registry=r,
        )
        self.patterns = Gauge(
            "anomaly_agent_patterns",
            "Patterns in the table now (one table per model; a reload starts an empty one).",
            registry=r,
        )
        self.alerts_suppressed = Counter(
            "anomaly_agent_alerts_suppressed_total",
            "Anomalous events counted in an open cooldown window of their pattern instead of alerting "
            "(alerts.group_by = pattern); the window's summary carries the count.",
            registry=r,
        )
        self.alert_summaries = Counter(
            "anomaly_agent_alert_summaries_published_total",
            "Summaries published: cooldown windows that ended after suppressing events.",
            registry=r,
        )
        self.alerts_muted = Counter(
            "anomaly_agent_alerts_muted_total",
            "Anomalous events not alerted because an operator marked their pattern normal (feedback).",
            registry=r,
        )
        self.alert_groups_open = Gauge(
            "anomaly_agent_alert_groups_open",
            "Cooldown windows open now (one per pattern and input partition that alerted within the "
            "cooldown); recomputed every few seconds.",
            registry=r,
        )
        self.rate_alerts = Counter(
            "anomaly_agent_rate_alerts_total",
            "Rate alerts published, by kind: spike (a known pattern far above its baseline) and "
            "silence (a steady pattern stopped); a spike's summary is counted as a summary.",
            ["kind"],
            registry=r,
        )
        self.rate_keys = Gauge(
            "anomaly_agent_rate_keys",
            "Rate keys (pattern and key fields per input partition) with a baseline now; recomputed "
            "every few seconds.",
            registry=r,
        )
        self.sessions_open = Gauge(
            "anomaly_agent_sessions_open",
            "Sessions open now (a key's events within its gap), all assigned partitions; recomputed "
            "every few seconds.",
            registry=r,
        )
        self.sessions_closed = Counter(
            "anomaly_agent_sessions_closed_total",
            "Sessions closed and scored, by reason: gap (inactive for [sessions] gap_seconds), "
            "max_seconds or max_events (a cap), evicted (closed early: max_open reached).",
            ["reason"],
            registry=r,
        )
        self.session_alerts = Counter(
            "anomaly_agent_session_alerts_total",
            "Session alerts published (a decisive step or an anomalous close; a window of sessions "
            "that failed alike counts once, its summary as a summary).",
            registry=r,
        )
        self.session_keys_split = Counter(
            "anomaly_agent_session_keys_split_total",
            "Events whose session key was open on another input partition at the same time: their "
            "producer does not key records by session, so the session is split.",
            registry=r,
        )
        self.patterns_muted = Gauge(
            "anomaly_agent_patterns_muted",
            "Patterns whose latest feedback verdict is normal.",
            registry=r,
        )
        self.feedback_invalid = Counter(
            "anomaly_agent_feedback_invalid_total",
            "Feedback records skipped because they are not a valid verdict.",
            registry=r,
        )
        self.kafka_calls_hung = Counter(
            "anomaly_agent_kafka_calls_hung_total",
            "Blocking Kafka client calls that did not return within their deadline, by call.",
            ["call"],
            registry=r,
        )
        self.producers_replaced = Counter(
            "anomaly_agent_producers_replaced_total",
            "Producers abandoned and replaced, by reason (fatal error, a call that hung, a broker outage).",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            "anomaly_agent_ready",
            "1 when /readyz answers 200 (model loaded, group joined, broker reachable, not stopping).",
            registry=r,
        )
        self.build_info = Gauge(
            "anomaly_agent_build_info",
            "The agent's version (value 1).",
            ["version"],
            registry=r,
        )
        # The optional Alertmanager sink (exporters/alertmanager.py): delivery after the Kafka
        # commit, so its failures show here, never in the Kafka series.
        self.alertmanager_posts = Counter(
            "anomaly_agent_alertmanager_posts_total",
            "HTTP POSTs of alert batches to Alertmanager, by result (failure: no 2xx answer).",
            ["result"],
            registry=r,
        )
        self.alertmanager_alerts_dropped = Counter(
            "anomaly_agent_alertmanager_alerts_dropped_total",
            "Alerts given up for Alertmanager: queue full, retries exhausted, rejected, or left at close.",
            registry=r,
        )
        self.alertmanager_queue = Gauge(
            "anomaly_agent_alertmanager_queue",
            "Alerts waiting for Alertmanager (queued plus the batch being posted).",
            registry=r,
        )
        for post_result in ("success", "failure"):
            self.alertmanager_posts.labels(result=post_result)

        for reason in DeadLetterReason:
            self.events_dead_lettered.labels(reason=reason.value)
        for stage in Stage:
            self.stage_duration.labels(stage=stage.value)
        for reload_result in ReloadResult:
            self.reloads.labels(result=reload_result.value)
        for tx_result in TransactionResult:
            self.transactions.labels(result=tx_result.value)
        for lookup in LookupResult:
            self.pattern_lookups.labels(result=lookup.value)
        for kind in RateKind:
            self.rate_alerts.labels(kind=kind.value)
        for close in SessionCloseReason:
            self.sessions_closed.labels(reason=close.value)
        for call in KafkaCall:
            self.kafka_calls_hung.labels(call=call.value)
        for reason_ in ReplaceReason:
            self.producers_replaced.labels(reason=reason_.value)
        self.build_info.labels(version=__version__).set(1)

        self._lock = threading.Lock()
        self._model_labels: tuple[str, str, str] | None = None
        self._lag_labels: set[tuple[str, str]] = set()

    def set_model(
        self, model_id: str, sha256: str, detector: str, created_at: datetime | str | None = None
    ) -> None:
        """Mark the model in use, removing the previous one's series so only the current is 1.

        ``created_at`` (the manifest's ISO 8601 ``created_at``, or a timezone-aware datetime) sets
        ``anomaly_agent_model_created_timestamp_seconds`` for the model-staleness alert; when it is
        None or unparsable that series is absent rather than 0, which would read as "1970".
        """
        labels = (model_id, sha256, detector)
        created = _timestamp(created_at)
        with self._lock:
            if self._model_labels is not None and self._model_labels != labels:
                self.model_info.remove(*self._model_labels)
            self.model_created.clear()  # holds at most the previous model's series
            self.model_info.labels(*labels).set(1)
            if created is not None:
                self.model_created.labels(model_id).set(created)
            self._model_labels = labels

    def observe_batch(
        self,
        scores: Iterable[float],
        timestamps_ms: Iterable[int | None],
        *,
        now: float | None = None,
    ) -> None:
        """Record one scored batch: ``batch_size``, ``anomaly_score`` and ``event_lag`` per event,
        ``events_processed`` += batch length, ``last_processed`` = now. An empty batch (every
        record dead-lettered) is not a ``batch_size`` observation: the histogram describes the
        batches the embedder saw.

        ``timestamps_ms`` are the records' Kafka timestamps (None where absent: no lag sample).
        Lag is clamped at 0 so producer clock skew cannot produce negative observations.
        ``now`` is Unix time in seconds (default: ``time.time()``).
        """
        now = time.time() if now is None else now
        values = np.fromiter(scores, dtype=np.float64)
        count = len(values)
        observe_many(self.anomaly_score, values)
        stamps = np.fromiter((-1 if ts is None else ts for ts in timestamps_ms), dtype=np.float64)
        stamps = stamps[stamps >= 0]
        observe_many(self.event_lag, np.maximum(0.0, now - stamps / 1000.0))
        if count:
            self.batch_size.observe(count)
            self.events_processed.inc(count)
        self.last_processed.set(now)

    @contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        """Observe the block's wall time in ``stage_duration_seconds{stage}``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_duration.labels(stage=stage.value).observe(time.perf_counter() - start)

    def dead_lettered(self, reason: DeadLetterReason) -> None:
        self.events_dead_lettered.labels(reason=reason.value).inc()

    def update_from_librdkafka_stats(self, stats_json: str) -> None:
        """Update ``consumer_lag`` from librdkafka's statistics JSON (the consumer's ``stats_cb``).

        Reads ``topics.<topic>.partitions.<p>.consumer_lag`` (high watermark, or last stable offset
        under read_committed, minus the committed offset); where that is -1 because the consumer
        itself never commits (exactly-once: offsets go through the producer's transaction), the
        lag is the last stable offset (else high watermark) minus ``app_offset``, the next offset
        handed to the loop. Skipped: partition ``-1`` (librdkafka's internal UA partition),
        partitions with ``"desired": false`` (revoked: librdkafka keeps reporting them, with their
        last lag, after a rebalance) and partitions whose lag is unknown by both measures. Series of
        partitions skipped or missing in the latest report are removed, so the label set is the
        current assignment.
        Statistics from a producer (``"type": "producer"``) are ignored: they list topics with
        lag -1 everywhere and would otherwise wipe the consumer's series when one callback is
        shared. Malformed JSON raises ValueError; the caller logs it (stats_cb must not crash).
        """
        stats: Any = json.loads(stats_json)
        if not isinstance(stats, dict):
            raise ValueError("librdkafka statistics must be a JSON object")
        if stats.get("type") not in (None, "consumer"):
            return
        current: dict[tuple[str, str], float] = {}
        topics = stats.get("topics") or {}
        for topic_name, topic in topics.items():
            for partition_id, partition in (topic.get("partitions") or {}).items():
                # Revoked partitions stay in the report with their last lag and desired=false.
                if str(partition_id) == "-1" or partition.get("desired") is False:
                    continue
                lag = _partition_lag(partition)
                if lag is None:
                    continue
                current[(str(topic_name), str(partition_id))] = float(lag)
        with self._lock:
            for labels in self._lag_labels - current.keys():
                self.consumer_lag.remove(*labels)
            for labels, lag in current.items():
                self.consumer_lag.labels(*labels).set(lag)
            self._lag_labels = set(current)

    def serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` for this registry on ``host:port`` in a daemon thread.

        Port 0 binds a free port (read it from ``server.server_port``). Stop with
        ``server.shutdown(); server.server_close()``.
        """
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return server, thread


def _partition_lag(partition: dict[str, Any]) -> float | None:
    """Lag of one partition entry of librdkafka's statistics, or None when it is unknown."""

    def offset(name: str) -> int:
        value = partition.get(name, -1)
        return int(value) if isinstance(value, int | float) else -1

    lag = offset("consumer_lag")
    if lag >= 0:
        return float(lag)
    end = offset("ls_offset") if offset("ls_offset") >= 0 else offset("hi_offset")
    position = offset("app_offset")
    if end < 0 or position < 0:
        return None
    return float(max(end - position, 0))
