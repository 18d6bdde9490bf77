"""End to end on the real broker: the agent alerts on exactly the events the offline scorer flags.

A bundle trained with ``anomaly-agent train`` on BGL normal lines; a stream of held-out normal
lines, BGL alert lines and foreign texts (SMS) is produced to the input topic; the pipeline runs
in-process until it has committed every event. The alert topic, read as subscribers read it
(read_committed), must hold one alert for each event ``anomaly-agent score`` calls anomalous and
none for the others, matched by the alert's source partition/offset.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from agent_helpers import (
    AgentTopics,
    alert_sources,
    json_records,
    make_events,
    offline_anomalies,
    offsets,
    pipeline_settings,
    produce,
    read_committed,
)
from kafka_fixtures import GroupFactory, TopicFactory

from agent.model.defaults import DEFAULT_DETECTOR
from agent.pipeline import Pipeline, load_model
from exporters.alerts import alert_id
from exporters.metrics import AgentMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_alerts_are_exactly_the_offline_anomalies(
    delivery: str,
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    source, alerts_topic, dead_topic, group = make_topic(2), make_topic(1), make_topic(1), make_group()
    events = make_events(datasets_dir, normal=120, bgl_alerts=30, foreign=30, seed=7)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    anomalous = {i for i, flagged in enumerate(expected) if flagged}
    # A test whose stream has no anomalies (or only anomalies) could not tell alerting from noise.
    assert 10 <= len(anomalous) <= len(events) - 50, f"{len(anomalous)} anomalies among {len(events)}"

    positions = produce(kafka_bootstrap, source, json_records(events))
    event_at = {position: i for i, position in enumerate(positions)}

    settings = pipeline_settings(
        kafka_bootstrap,
        AgentTopics(source, alerts_topic, dead_topic, group),
        agent_bundle,
        instance_id="e2e-agent",
        batch_size=32,
        delivery=delivery,
        kafka={"librdkafka": {"statistics.interval.ms": 500}},
    )
    model = load_model(agent_bundle, intra_op_threads=1)
    metrics = AgentMetrics(batch_max_size=32)
    with Pipeline(settings, model, metrics=metrics) as pipeline:
        stats = pipeline.run(max_messages=len(events), idle_timeout_s=60)
        # Keep polling a little: librdkafka statistics (every 0.5 s here) report the lag after
        # the last commit, per assigned partition, into anomaly_agent_consumer_lag_messages.
        idle = pipeline.run(idle_timeout_s=1.5)
    assert idle.consumed == 0
    for partition in (0, 1):
        lag = metrics.registry.get_sample_value(
            "anomaly_agent_consumer_lag_messages", {"topic": source, "partition": str(partition)}
        )
        assert lag == 0, f"consumer lag of partition {partition} after the run: {lag}"

    assert stats.consumed == len(events)
    assert stats.processed == len(events)
    assert stats.dead_lettered == 0
    assert stats.alerts == len(anomalous)

    alerts = read_committed(kafka_bootstrap, alerts_topic)
    sources = alert_sources(alerts)
    duplicates = {s: n for s, n in Counter(sources).items() if n > 1}
    assert not duplicates, f"alerts published more than once: {duplicates}"
    alerted = {event_at[s] for s in sources}
    assert alerted == anomalous, (
        f"missing alerts for events {sorted(anomalous - alerted)}, "
        f"unexpected alerts for {sorted(alerted - anomalous)}"
    )

    for msg in alerts:
        alert = json.loads(msg.value() or b"")
        event = events[event_at[(alert["source"]["partition"], alert["source"]["offset"])]]
        assert alert["id"] == alert_id(source, alert["source"]["partition"], alert["source"]["offset"])
        assert alert["source"]["topic"] == source
        assert alert["source"]["key"] == f"key-{event['seq']}"
        assert alert["text"] == event["text"][:1000]
        assert alert["fields"] == {"host": event["host"], "seq": event["seq"]}
        assert alert["score"] > 1.0 and alert["threshold"] == 1.0
        assert alert["model"] == {"id": model.bundle.model_id, "sha256": model.bundle.sha256}
        assert alert["detector"] == "knn" and alert["agent"] == "e2e-agent"
        headers = dict(msg.headers() or [])
        assert headers["ce_specversion"] == b"1.0" and headers["ce_id"] == alert["id"].encode()
        assert headers["content-type"] == b"application/json"

    assert read_committed(kafka_bootstrap, dead_topic, quiet_s=0.5) == []
    committed, ends = offsets(kafka_bootstrap, group, source)
    assert committed == ends, "the consumer group's committed offsets did not reach the end of the input"

    sample = metrics.registry.get_sample_value
    assert sample("anomaly_agent_events_consumed_total") == len(events)
    assert sample("anomaly_agent_events_processed_total") == len(events)
    assert sample("anomaly_agent_alerts_published_total") == len(anomalous)
    assert sample("anomaly_agent_anomaly_score_count") == len(events)
    info = {"model_id": model.bundle.model_id, "sha256": model.bundle.sha256, "detector": "knn"}
    assert sample("anomaly_agent_model_info", info) == 1
    created = datetime.fromisoformat(model.bundle.manifest["created_at"]).timestamp()
    age_series = {"model_id": model.bundle.model_id}
    assert sample("anomaly_agent_model_created_timestamp_seconds", age_series) == pytest.approx(created)
    if delivery == "exactly_once":
        assert (sample("anomaly_agent_transactions_total", {"result": "committed"}) or 0) >= len(events) / 32
        assert sample("anomaly_agent_transactions_total", {"result": "aborted"}) == 0


def test_the_default_detector_reads_texts_on_the_agent_as_offline(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    default_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """train's default (``fused``, which scores the prepared texts beside the vectors) through the
    real broker: alerts for exactly the events ``anomaly-agent score`` flags."""
    model = load_model(default_bundle, intra_op_threads=1)
    assert model.bundle.detector.name == DEFAULT_DETECTOR and model.bundle.detector.uses_texts
    source, alerts_topic, dead_topic, group = make_topic(2), make_topic(1), make_topic(1), make_group()
    events = make_events(datasets_dir, normal=120, bgl_alerts=30, foreign=30, seed=11)
    expected = offline_anomalies(default_bundle, events, tmp_path)
    anomalous = {i for i, flagged in enumerate(expected) if flagged}
    assert 10 <= len(anomalous) <= len(events) - 50, f"{len(anomalous)} anomalies among {len(events)}"
    positions = produce(kafka_bootstrap, source, json_records(events))
    event_at = {position: i for i, position in enumerate(positions)}
    settings = pipeline_settings(
        kafka_bootstrap, AgentTopics(source, alerts_topic, dead_topic, group), default_bundle,
        instance_id="e2e-default", batch_size=32,
    )  # fmt: skip
    with Pipeline(settings, model, metrics=AgentMetrics(batch_max_size=32)) as pipeline:
        stats = pipeline.run(max_messages=len(events), idle_timeout_s=60)
    assert stats.processed == len(events) and stats.dead_lettered == 0
    alerts = read_committed(kafka_bootstrap, alerts_topic)
    assert {event_at[s] for s in alert_sources(alerts)} == anomalous
    assert all(json.loads(m.value() or b"")["detector"] == DEFAULT_DETECTOR for m in alerts)


def test_the_pattern_table_changes_no_alert(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
) -> None:
    """The same events, the same bundle, two agents: one with the pattern table (the default), one
    with ``patterns.enabled = false``. Their alert topics hold alerts for exactly the same source
    records, and the table was used (hits counted) — BGL lines repeat once masked."""
    source = make_topic(2)
    events = make_events(datasets_dir, normal=200, bgl_alerts=30, foreign=20, seed=17)
    events += [dict(e, seq=len(events) + i) for i, e in enumerate(events[:100])]  # repeats, later
    produce(kafka_bootstrap, source, json_records(events))
    model = load_model(agent_bundle, intra_op_threads=1)
    results: dict[bool, tuple[list[tuple[int, int]], AgentMetrics]] = {}
    for enabled in (True, False):
        topics = AgentTopics(source, make_topic(1), make_topic(1), make_group())
        settings = pipeline_settings(
            kafka_bootstrap, topics, agent_bundle, instance_id=f"patterns-{enabled}", batch_size=64,
            patterns={"enabled": enabled},
        )  # fmt: skip
        metrics = AgentMetrics(batch_max_size=64)
        with Pipeline(settings, model, metrics=metrics) as pipeline:
            stats = pipeline.run(max_messages=len(events), idle_timeout_s=60)
        assert stats.processed == len(events)
        results[enabled] = (sorted(alert_sources(read_committed(kafka_bootstrap, topics.alerts))), metrics)
    (with_table, metrics_on), (without, metrics_off) = results[True], results[False]
    assert with_table == without and len(with_table) >= 10
    hits = metrics_on.registry.get_sample_value("anomaly_agent_pattern_lookups_total", {"result": "hit"})
    misses = metrics_on.registry.get_sample_value("anomaly_agent_pattern_lookups_total", {"result": "miss"})
    assert hits is not None and misses is not None and hits + misses == len(events) and hits > len(events) / 2
    assert metrics_on.registry.get_sample_value("anomaly_agent_patterns") == misses
    assert (
        metrics_off.registry.get_sample_value("anomaly_agent_pattern_lookups_total", {"result": "hit"}) == 0
    )
