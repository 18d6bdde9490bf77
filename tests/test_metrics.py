"""AgentMetrics: names, pre-initialised series, librdkafka lag parsing, model swap, HTTP exposition."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.decode import DeadLetterReason
from exporters.metrics import SCORE_BUCKETS, AgentMetrics, Stage, batch_buckets, observe_many

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: AgentMetrics) -> Samples:
    """Every sample of the registry's text exposition, parsed back: (name, labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def lag_series(metrics: AgentMetrics) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["topic"], dict(labels)["partition"]): v
        for (name, labels), v in samples(metrics).items()
        if name == "anomaly_agent_consumer_lag_messages"
    }


def partition_stats(
    partition: int,
    consumer_lag: int,
    fetch_state: str = "active",
    desired: bool = True,
    app_offset: int | None = None,
) -> dict[str, Any]:
    """One partition entry as librdkafka 2.x reports it in ``topics.<t>.partitions.<p>``.

    An unknown lag (-1) comes with no position either (-1001, librdkafka's "invalid offset")
    unless ``app_offset`` says where the loop is.
    """
    if app_offset is None:
        app_offset = 120 if consumer_lag >= 0 else -1001
    return {
        "partition": partition,
        "broker": 1 if partition >= 0 else -1,
        "leader": 1 if partition >= 0 else -1,
        "desired": desired,
        "unknown": False,
        "msgq_cnt": 0,
        "msgq_bytes": 0,
        "xmit_msgq_cnt": 0,
        "xmit_msgq_bytes": 0,
        "fetchq_cnt": 0,
        "fetchq_size": 0,
        "fetch_state": fetch_state,
        "query_offset": -1001,
        "next_offset": 120,
        "app_offset": app_offset,
        "stored_offset": 120,
        "stored_leader_epoch": -1,
        "commited_offset": 100,
        "committed_offset": 100,
        "committed_leader_epoch": -1,
        "eof_offset": 150,
        "lo_offset": 0,
        "hi_offset": 150,
        "ls_offset": 150,
        "consumer_lag": consumer_lag,
        "consumer_lag_stored": consumer_lag,
        "leader_epoch": -1,
        "txmsgs": 0,
        "txbytes": 0,
        "rxmsgs": 150,
        "rxbytes": 18000,
        "msgs": 150,
        "rx_ver_drops": 0,
        "msgs_inflight": 0,
        "next_ack_seq": 0,
        "next_err_seq": 0,
        "acked_msgid": 0,
    }


def stats_json(
    topics: dict[str, dict[int, int]],
    client_type: str = "consumer",
    revoked: dict[str, dict[int, int]] | None = None,
) -> str:
    """A librdkafka statistics document (abridged top level, full partition entries)."""
    return json.dumps(
        {
            "name": "anomaly-agent#consumer-1",
            "client_id": "anomaly-agent",
            "type": client_type,
            "ts": 5_016_483_227_792,
            "time": 1_763_834_967,
            "age": 5_000_000,
            "replyq": 0,
            "msg_cnt": 0,
            "msg_size": 0,
            "msg_max": 100_000,
            "msg_size_max": 1_073_741_824,
            "simple_cnt": 0,
            "metadata_cache_cnt": 1,
            "brokers": {},
            "topics": {
                topic: {
                    "topic": topic,
                    "age": 4_990,
                    "metadata_age": 4_000,
                    "batchsize": {"min": 0, "max": 0, "avg": 0},
                    "batchcnt": {"min": 0, "max": 0, "avg": 0},
                    # librdkafka always lists the internal UA partition -1 with lag -1.
                    "partitions": {
                        **{str(p): partition_stats(p, lag) for p, lag in partitions.items()},
                        **{
                            str(p): partition_stats(p, lag, fetch_state="stopped", desired=False)
                            for p, lag in (revoked or {}).get(topic, {}).items()
                        },
                        "-1": partition_stats(-1, -1, fetch_state="none", desired=False),
                    },
                }
                for topic, partitions in {**(revoked or {}), **topics}.items()
            },
            "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 2},
        }
    )


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics(batch_max_size=64)


def test_each_instance_has_its_own_registry() -> None:
    a, b = AgentMetrics(), AgentMetrics()  # would raise "Duplicated timeseries" on a shared one
    a.events_consumed.inc(3)
    assert value(a, "anomaly_agent_events_consumed_total") == 3
    assert value(b, "anomaly_agent_events_consumed_total") == 0


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    metrics.alerts_published.inc()
    assert registry.get_sample_value("anomaly_agent_alerts_published_total") == 1


def test_contract_series_exist_at_zero_from_start(metrics: AgentMetrics) -> None:
    s = samples(metrics)
    for name in (
        "anomaly_agent_events_consumed_total",
        "anomaly_agent_events_processed_total",
        "anomaly_agent_alerts_published_total",
        "anomaly_agent_anomaly_score_count",
        "anomaly_agent_batch_size_count",
        "anomaly_agent_event_lag_seconds_count",
        "anomaly_agent_last_processed_timestamp_seconds",
        "anomaly_agent_ready",
    ):
        assert s[(name, frozenset())] == 0, name
    for reason in DeadLetterReason:
        assert s[("anomaly_agent_events_dead_lettered_total", frozenset({("reason", reason.value)}))] == 0
    assert {r.value for r in DeadLetterReason} >= {
        "invalid_utf8",
        "invalid_json",
        "missing_text",
        "empty_text",
        "too_large",
        "not_an_object",
    }
    for stage in ("decode", "embed", "score", "publish", "commit"):
        key = ("anomaly_agent_stage_duration_seconds_count", frozenset({("stage", stage)}))
        assert s[key] == 0
    for result in ("success", "failure"):
        assert s[("anomaly_agent_reloads_total", frozenset({("result", result)}))] == 0
    for result in ("committed", "aborted"):
        assert s[("anomaly_agent_transactions_total", frozenset({("result", result)}))] == 0
    assert s[("anomaly_agent_build_info", frozenset({("version", __version__)}))] == 1
    assert not any(name == "anomaly_agent_model_info" for name, _ in s)


def test_score_buckets_are_dense_around_the_threshold(metrics: AgentMetrics) -> None:
    bounds = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples(metrics)
        if name == "anomaly_agent_anomaly_score_bucket"
    )
    assert 1.0 in bounds
    near = [b for b in bounds if 0.9 <= b <= 1.1]
    assert len(near) >= 5  # 0.9, 0.95, 1.0, 1.05, 1.1


def test_batch_buckets_end_at_the_configured_max() -> None:
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(100)[-2:] == (64, 100)
    assert batch_buckets(1) == (1,)
    assert batch_buckets(10_000)[-1] == 10_000
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_observe_batch(metrics: AgentMetrics) -> None:
    now = 1_763_834_967.5
    metrics.observe_batch([0.3, 0.97, 1.02, 4.0], [1_763_834_967_000, None, 1_763_834_966_000, None], now=now)
    assert value(metrics, "anomaly_agent_batch_size_count") == 1
    assert value(metrics, "anomaly_agent_batch_size_sum") == 4
    assert value(metrics, "anomaly_agent_events_processed_total") == 4
    assert value(metrics, "anomaly_agent_anomaly_score_count") == 4
    assert value(metrics, "anomaly_agent_anomaly_score_bucket", le="1.0") == 2
    assert value(metrics, "anomaly_agent_anomaly_score_bucket", le="1.05") == 3
    assert value(metrics, "anomaly_agent_event_lag_seconds_count") == 2
    assert value(metrics, "anomaly_agent_event_lag_seconds_sum") == pytest.approx(2.0)
    assert value(metrics, "anomaly_agent_last_processed_timestamp_seconds") == now


def test_observe_many_equals_one_observe_per_value() -> None:
    """The aggregated observation gives exactly the exposition of per-value ``observe`` calls,
    bucket edges (v == bound), infinities and NaN included."""
    values = np.concatenate(
        [
            np.random.default_rng(0).exponential(1.0, 5_000),
            np.asarray(SCORE_BUCKETS),  # exactly on every bound
            [0.0, -1.0, np.inf, np.nan, 1e308],
        ]
    )
    one_by_one, aggregated = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", buckets=SCORE_BUCKETS, registry=one_by_one)
    for v in values:
        reference.observe(float(v))
    observe_many(Histogram("h", "h", buckets=SCORE_BUCKETS, registry=aggregated), values)

    def exposition(registry: CollectorRegistry) -> list[str]:  # h_created differs: when each was made
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert exposition(aggregated) == exposition(one_by_one)
    assert any(line.startswith('h_bucket{le="1.0"}') for line in exposition(aggregated))
    observe_many(reference, np.asarray([], dtype=np.float64))  # nothing observed: nothing changes
    assert exposition(aggregated) == exposition(one_by_one)


def test_batch_of_only_dead_letters_is_no_batch_size_sample(metrics: AgentMetrics) -> None:
    metrics.observe_batch([], [], now=1_000.0)
    assert value(metrics, "anomaly_agent_batch_size_count") == 0
    assert value(metrics, "anomaly_agent_events_processed_total") == 0
    assert value(metrics, "anomaly_agent_last_processed_timestamp_seconds") == 1_000.0


def test_event_lag_from_a_future_timestamp_is_clamped_to_zero(metrics: AgentMetrics) -> None:
    metrics.observe_batch([0.5], [2_000_000_000_000], now=1_000_000_000.0)
    assert value(metrics, "anomaly_agent_event_lag_seconds_sum") == 0
    assert value(metrics, "anomaly_agent_event_lag_seconds_bucket", le="0.001") == 1


def test_stage_and_dead_letter_labels(metrics: AgentMetrics) -> None:
    with metrics.stage_duration.labels(Stage.EMBED).time():
        pass
    metrics.dead_lettered(DeadLetterReason.INVALID_JSON)
    metrics.dead_lettered(DeadLetterReason.INVALID_JSON)
    assert value(metrics, "anomaly_agent_stage_duration_seconds_count", stage="embed") == 1
    assert value(metrics, "anomaly_agent_stage_duration_seconds_count", stage="score") == 0
    assert value(metrics, "anomaly_agent_events_dead_lettered_total", reason="invalid_json") == 2


def test_consumer_lag_from_librdkafka_stats(metrics: AgentMetrics) -> None:
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 30, 1: 0, 2: -1}, "audit": {0: 7}}))
    # Partition 2 lag -1 (unknown) and the UA partition -1 are skipped.
    assert lag_series(metrics) == {("events", "0"): 30, ("events", "1"): 0, ("audit", "0"): 7}


def test_consumer_lag_without_consumer_commits_uses_the_loop_position(metrics: AgentMetrics) -> None:
    """Exactly-once commits offsets through the producer, so librdkafka's consumer_lag stays -1."""
    stats = json.loads(stats_json({"events": {0: -1}}))
    stats["topics"]["events"]["partitions"]["0"] = partition_stats(0, -1, app_offset=120)
    metrics.update_from_librdkafka_stats(json.dumps(stats))
    # ls_offset 150 - app_offset 120
    assert lag_series(metrics) == {("events", "0"): 30}


def test_revoked_partitions_lose_their_series(metrics: AgentMetrics) -> None:
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 30, 1: 5}, "audit": {0: 7}}))
    metrics.update_from_librdkafka_stats(stats_json({"events": {1: 2, 3: 9}}))
    assert lag_series(metrics) == {("events", "1"): 2, ("events", "3"): 9}
    metrics.update_from_librdkafka_stats(stats_json({"events": {1: -1}}))
    assert lag_series(metrics) == {}


def test_partitions_reported_after_revocation_lose_their_series(metrics: AgentMetrics) -> None:
    """librdkafka keeps revoked partitions in its report, with their last lag and desired=false."""
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 2, 1: 0}}))
    metrics.update_from_librdkafka_stats(stats_json({"events": {1: 0}}, revoked={"events": {0: 2}}))
    assert lag_series(metrics) == {("events", "1"): 0}
    metrics.update_from_librdkafka_stats(stats_json({}, revoked={"events": {0: 2, 1: 0}}))
    assert lag_series(metrics) == {}


def test_producer_stats_do_not_touch_consumer_lag(metrics: AgentMetrics) -> None:
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 30}}))
    metrics.update_from_librdkafka_stats(stats_json({"anomaly-alerts": {0: -1}}, client_type="producer"))
    assert lag_series(metrics) == {("events", "0"): 30}


def test_stats_without_topics_clear_the_lag(metrics: AgentMetrics) -> None:
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 30}}))
    metrics.update_from_librdkafka_stats(json.dumps({"type": "consumer", "name": "c"}))
    assert lag_series(metrics) == {}


def test_malformed_stats_raise_value_error(metrics: AgentMetrics) -> None:
    with pytest.raises(ValueError):
        metrics.update_from_librdkafka_stats("{not json")
    with pytest.raises(ValueError):
        metrics.update_from_librdkafka_stats("[]")


def model_series(metrics: AgentMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples(metrics).items() if n == name}


def test_model_info_swap_keeps_only_the_current_model(metrics: AgentMetrics) -> None:
    metrics.set_model("logs-2026-11-01", "a" * 64, "kmeans", created_at="2026-11-01T08:00:00Z")
    metrics.set_model("logs-2026-11-01", "a" * 64, "kmeans", created_at="2026-11-01T08:00:00Z")  # idempotent
    assert model_series(metrics, "anomaly_agent_model_created_timestamp_seconds") == {
        frozenset({("model_id", "logs-2026-11-01")}): datetime(2026, 11, 1, 8, tzinfo=UTC).timestamp()
    }
    metrics.set_model("logs-2026-11-22", "b" * 64, "hdbscan", created_at=datetime(2026, 11, 22, tzinfo=UTC))
    assert model_series(metrics, "anomaly_agent_model_info") == {
        frozenset({("model_id", "logs-2026-11-22"), ("sha256", "b" * 64), ("detector", "hdbscan")}): 1
    }
    assert model_series(metrics, "anomaly_agent_model_created_timestamp_seconds") == {
        frozenset({("model_id", "logs-2026-11-22")}): datetime(2026, 11, 22, tzinfo=UTC).timestamp()
    }


@pytest.mark.parametrize("created_at", [None, "last tuesday", datetime(2026, 11, 22)])
def test_unknown_model_age_is_absent_not_zero(
    metrics: AgentMetrics, created_at: datetime | str | None
) -> None:
    """A 0 would read as "trained in 1970" and fire the staleness alert."""
    metrics.set_model("m1", "a" * 64, "knn", created_at="2026-11-01T08:00:00+00:00")
    metrics.set_model("m2", "b" * 64, "knn", created_at=created_at)
    assert model_series(metrics, "anomaly_agent_model_created_timestamp_seconds") == {}
    metrics.set_model("m3", "c" * 64, "knn", created_at=created_at)  # swapping from "unknown" works
    assert model_series(metrics, "anomaly_agent_model_created_timestamp_seconds") == {}
    assert len(model_series(metrics, "anomaly_agent_model_info")) == 1


def test_serve_exposes_the_registry_over_http(metrics: AgentMetrics) -> None:
    metrics.events_consumed.inc(5)
    server, thread = metrics.serve("127.0.0.1", 0)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["anomaly_agent_events_consumed"].samples[0].value == 5
        assert "anomaly_agent_consumer_lag_messages" in families
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_docs_list_every_exported_metric_and_label() -> None:
    """docs/metrics.md is the dashboard authors' reference: it must not miss a series."""
    markdown = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    metrics = AgentMetrics()
    metrics.set_model("m", "s", "kmeans", created_at="2026-11-22T00:00:00Z")
    metrics.update_from_librdkafka_stats(stats_json({"events": {0: 1}}))
    for family in metrics.registry.collect():
        if family.name.endswith("_created"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in markdown, name
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label != "le":
                    assert f"`{label}`" in markdown, (name, label)
                    if label in {"reason", "stage", "result"}:
                        assert f"`{label_value}`" in markdown, (name, label, label_value)


@pytest.mark.integration
def test_consumer_lag_from_a_real_consumers_statistics(
    kafka_bootstrap: str, make_topic: Callable[..., str], make_group: Callable[[], str]
) -> None:
    """Real librdkafka statistics: lag per assigned partition, series gone after revocation."""
    topic = make_topic(partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, value=b"event", partition=i % 2)
    assert producer.flush(30) == 0

    metrics = AgentMetrics()
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": make_group(),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "statistics.interval.ms": 100,
            "stats_cb": metrics.update_from_librdkafka_stats,
        }
    )

    def ours() -> dict[tuple[str, str], float]:
        return {k: v for k, v in lag_series(metrics).items() if k[0] == topic}

    def poll_until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"{what}: lag series are {ours()}"
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                consumed.append(message)

    consumed: list[Any] = []
    try:
        consumer.subscribe([topic])
        poll_until(lambda: len(consumed) == 10, "consuming 10 records")
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 5)], asynchronous=False
        )
        poll_until(lambda: ours() == {(topic, "0"): 2.0, (topic, "1"): 0.0}, "lag after commit")
        consumer.unsubscribe()
        poll_until(lambda: ours() == {}, "lag series after revocation")
    finally:
        consumer.close()
