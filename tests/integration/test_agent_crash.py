"""Crash test on the real broker: ``kill -9`` the agent at random moments while a stream flows.

The agent runs as a process (``anomaly-agent run``, configured by environment) with the default
exactly-once delivery. While a producer streams events, the agent is killed with SIGKILL shortly
after it has committed its first transaction of each life (so it dies mid-backlog, often with a
transaction open), and restarted, five times; a last instance drains the stream and stops with
SIGTERM. A read_committed reader must then find every alert ``anomaly-agent score`` expects, and
every dead letter, exactly once: counted by source partition/offset and by alert id.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    Record,
    StreamProducer,
    agent_env,
    alert_sources,
    json_records,
    make_events,
    offline_anomalies,
    offsets,
    pipeline_settings,
    produce,
    read_committed,
    wait_caught_up,
    wait_until,
)
from confluent_kafka import OFFSET_INVALID, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka_fixtures import GroupFactory, TopicFactory

from agent.health import HealthState
from agent.kafka.calls import CALL_TIMEOUT_S, DEADLINE_MARGIN_S
from agent.kafka.clients import transactional_id
from agent.pipeline import Pipeline, load_model
from exporters.metrics import AgentMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


KILLS = 5
COMMITTED = 'anomaly_agent_transactions_total{result="committed"}'
RATE = 10.0  # events/s: the stream outlasts the kill rounds, which wait out the 6 s session timeout


def test_kill_9_and_restart_publishes_every_alert_exactly_once(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    events = make_events(datasets_dir, normal=300, bgl_alerts=60, foreign=120, seed=23)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    # A malformed record every 40 records: dead letters are part of the transactions too.
    records: list[Record] = []
    is_alert: dict[int, bool] = {}  # record index -> expected to alert
    poison_at: set[int] = set()
    for record, flagged in zip(json_records(events), expected, strict=True):
        if len(records) % 40 == 20:
            poison_at.add(len(records))
            records.append((f"poison-{len(records)}".encode(), b"{broken json", None))
        is_alert[len(records)] = flagged
        records.append(record)
    assert 40 <= sum(is_alert.values()) <= len(events) - 100

    env = agent_env(kafka_bootstrap, topics, agent_bundle, instance_id="crash-agent", batch__max_size="16")
    stream = StreamProducer(kafka_bootstrap, topics.input, records, rate=RATE)
    rng = random.Random(5)
    kill_log: list[dict[str, float]] = []
    for life in range(KILLS):
        agent = AgentProcess(env, tmp_path / f"agent-{life}.log")
        agent_processes.append(agent)
        wait_until(lambda a=agent: _committed(a) >= 1, timeout=60, what="the agent's first commit")
        time.sleep(rng.uniform(0.0, 0.8))
        committed = _committed(agent)
        agent.kill()
        kill_log.append({"life": life, "committed_transactions": committed, "produced": stream.produced})

    final = AgentProcess(env, tmp_path / "agent-final.log")
    agent_processes.append(final)
    positions = stream.join(timeout=120)
    wait_caught_up(kafka_bootstrap, topics.group, topics.input, timeout=120)
    assert final.terminate() == 0, final.tail()

    record_at = {position: i for i, position in enumerate(positions)}
    alerts = read_committed(kafka_bootstrap, topics.alerts)
    by_source = Counter(record_at[s] for s in alert_sources(alerts))
    by_id = Counter(json.loads(m.value() or b"")["id"] for m in alerts)
    dead = read_committed(kafka_bootstrap, topics.dead_letter)
    dead_headers = [dict(m.headers() or []) for m in dead]
    dead_by_source = Counter(
        record_at[(int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))] for h in dead_headers
    )
    expected_alerts = {i for i, flagged in is_alert.items() if flagged}
    report = {
        "events": len(records),
        "kills": len(kill_log),
        "expected_alerts": len(expected_alerts),
        "alerts_read": len(alerts),
        # Records in the alert log incl. aborted ones and transaction markers: above alerts_read
        # + one marker per committed transaction when a kill left a transaction open.
        "alert_log_end_offset": sum(offsets(kafka_bootstrap, topics.group, topics.alerts)[1].values()),
        "distinct_alerts": len(by_source),
        "dead_letters_expected": len(poison_at),
        "dead_letters_read": len(dead),
        "kill_log": kill_log,
    }
    record_property("crash_test", json.dumps(report))
    print("crash test:", json.dumps(report))

    assert {i: n for i, n in by_source.items() if n > 1} == {}, "alerts duplicated across crashes"
    assert {i: n for i, n in by_id.items() if n > 1} == {}, "alert ids duplicated across crashes"
    assert set(by_source) == expected_alerts, (
        f"missing {sorted(expected_alerts - set(by_source))}, "
        f"unexpected {sorted(set(by_source) - expected_alerts)}"
    )
    assert dead_by_source == Counter(poison_at), "every malformed record dead-lettered exactly once"


def _committed(agent: AgentProcess) -> float:
    if agent.proc.poll() is not None:
        raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.tail()}")
    return agent.metric(COMMITTED)


def _set_max_message_bytes(admin: AdminClient, topic: str, value: int) -> None:
    entry = ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_failed_transactions_are_aborted_rewound_and_retried(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """The broker rejects every alert (the alert topic's max.message.bytes is too small): each
    transaction fails and is aborted, the consumer is rewound and retries the same records, and
    nothing — no alert, no offset — becomes visible. Once the topic accepts alerts again, the
    same records are processed and each expected alert appears exactly once."""
    source, alerts_topic, dead_topic, group = make_topic(1), make_topic(1), make_topic(1), make_group()
    _set_max_message_bytes(kafka_admin, alerts_topic, 200)  # an alert is ~1 kB
    events = make_events(datasets_dir, normal=20, bgl_alerts=0, foreign=20, seed=3)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    anomalous = {i for i, flagged in enumerate(expected) if flagged}
    assert anomalous
    positions = produce(kafka_bootstrap, source, json_records(events))
    event_at = {position: i for i, position in enumerate(positions)}

    settings = pipeline_settings(
        kafka_bootstrap,
        AgentTopics(source, alerts_topic, dead_topic, group),
        agent_bundle,
        instance_id="abort-agent",
        batch_size=64,
    )
    metrics = AgentMetrics(batch_max_size=64)
    sample = metrics.registry.get_sample_value
    health = HealthState(stall_seconds=3.0)
    pipeline = Pipeline(
        settings, load_model(agent_bundle, intra_op_threads=1), metrics=metrics, health=health
    )
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        wait_until(
            lambda: (sample("anomaly_agent_transactions_total", {"result": "aborted"}) or 0) >= 3,
            timeout=60,
            what="three aborted transactions",
        )
        # The loop keeps turning but commits nothing: liveness fails once that lasted stall_seconds.
        wait_until(lambda: not health.healthy()[0], timeout=30, what="/healthz to report not committing")
        assert health.healthy()[1]["status"] == "not_committing"
        assert sample("anomaly_agent_transactions_total", {"result": "committed"}) == 0
        assert (sample("anomaly_agent_events_consumed_total") or 0) >= 3 * len(events), "rewound and re-read"
        assert offsets(kafka_bootstrap, group, source)[0] == {0: OFFSET_INVALID}, "no offset committed"
        assert read_committed(kafka_bootstrap, alerts_topic, quiet_s=0.5) == []

        _set_max_message_bytes(kafka_admin, alerts_topic, 1_048_588)
        wait_caught_up(kafka_bootstrap, group, source, timeout=60)
        assert health.healthy()[0], "healthy again once batches commit"
    finally:
        pipeline.request_stop()
        runner.join(timeout=30)
        pipeline.close()

    sources = alert_sources(read_committed(kafka_bootstrap, alerts_topic))
    assert sorted(event_at[s] for s in sources) == sorted(anomalous), "each expected alert exactly once"
    assert sample("anomaly_agent_alerts_published_total") == len(anomalous)
    assert sample("anomaly_agent_events_processed_total") == len(events), "counted once, when committed"


def test_fenced_producer_is_recreated_and_the_batch_retried(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """Another producer takes over the agent's transactional.id (what a second instance with the
    same instance_id would do): the agent's producer is fenced, a fatal error. The agent recreates
    its producer (fencing the intruder in turn), rewinds, and every expected alert appears once."""
    source, alerts_topic, dead_topic, group = make_topic(1), make_topic(1), make_topic(1), make_group()
    events = make_events(datasets_dir, normal=30, bgl_alerts=0, foreign=30, seed=4)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    settings = pipeline_settings(
        kafka_bootstrap,
        AgentTopics(source, alerts_topic, dead_topic, group),
        agent_bundle,
        instance_id="fenced-agent",
        batch_size=16,
    )
    metrics = AgentMetrics(batch_max_size=16)
    sample = metrics.registry.get_sample_value
    pipeline = Pipeline(settings, load_model(agent_bundle, intra_op_threads=1), metrics=metrics)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        positions = produce(kafka_bootstrap, source, json_records(events[:30]))
        wait_caught_up(kafka_bootstrap, group, source, timeout=60)
        intruder = Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "transactional.id": transactional_id(group, "fenced-agent"),
            }
        )
        intruder.init_transactions(30)  # bumps the epoch: the agent's producer is now a zombie
        positions += produce(kafka_bootstrap, source, json_records(events[30:]))
        wait_caught_up(kafka_bootstrap, group, source, timeout=60)
    finally:
        pipeline.request_stop()
        runner.join(timeout=30)
        pipeline.close()

    assert (sample("anomaly_agent_transactions_total", {"result": "aborted"}) or 0) >= 1, "the fenced batch"
    event_at = {position: i for i, position in enumerate(positions)}
    sources = alert_sources(read_committed(kafka_bootstrap, alerts_topic))
    assert sorted(event_at[s] for s in sources) == [i for i, flagged in enumerate(expected) if flagged]


class _SlowProducer(Producer):
    """A real producer whose first call of one transactional method sleeps past the agent's
    deadline and *then* runs for real: a librdkafka call that hangs and may yet succeed — the
    dangerous case, where the abandoned producer's commit could land after the agent gave up."""

    slow_method = ""
    calls = 0

    def _maybe_hang(self, name: str) -> None:
        if name == type(self).slow_method and type(self).calls == 0:
            type(self).calls += 1
            time.sleep(CALL_TIMEOUT_S + DEADLINE_MARGIN_S + 1.5)

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self._maybe_hang("send_offsets_to_transaction")
        super().send_offsets_to_transaction(*args)

    def commit_transaction(self, *args: Any) -> None:
        self._maybe_hang("commit_transaction")
        super().commit_transaction(*args)


@pytest.mark.parametrize("slow_method", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_hung_transactional_call_is_abandoned_and_every_alert_published_once(
    slow_method: str,
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The call does not return within its deadline: the agent abandons the producer, a new one
    fences it (init_transactions) and the batch is rewound to the broker's committed offsets —
    whether or not the late call went through — so each expected alert appears exactly once."""
    monkeypatch.setattr(_SlowProducer, "slow_method", slow_method)
    monkeypatch.setattr(_SlowProducer, "calls", 0)
    monkeypatch.setattr("agent.kafka.delivery.Producer", _SlowProducer)
    source, alerts_topic, dead_topic, group = make_topic(2), make_topic(1), make_topic(1), make_group()
    events = make_events(datasets_dir, normal=30, bgl_alerts=10, foreign=20, seed=8)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    assert sum(expected) >= 10
    settings = pipeline_settings(
        kafka_bootstrap,
        AgentTopics(source, alerts_topic, dead_topic, group),
        agent_bundle,
        instance_id=f"hung-{slow_method}",
        batch_size=16,
    )
    metrics = AgentMetrics(batch_max_size=16)
    sample = metrics.registry.get_sample_value
    pipeline = Pipeline(settings, load_model(agent_bundle, intra_op_threads=1), metrics=metrics)
    positions = produce(kafka_bootstrap, source, json_records(events))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        wait_caught_up(kafka_bootstrap, group, source, timeout=120)
    finally:
        pipeline.request_stop()
        runner.join(timeout=30)
        pipeline.close()

    assert _SlowProducer.calls == 1, "the slow call happened"
    assert sample("anomaly_agent_kafka_calls_hung_total", {"call": slow_method}) == 1
    assert sample("anomaly_agent_producers_replaced_total", {"reason": "hung"}) == 1
    event_at = {position: i for i, position in enumerate(positions)}
    sources = alert_sources(read_committed(kafka_bootstrap, alerts_topic))
    assert sorted(event_at[s] for s in sources) == [i for i, flagged in enumerate(expected) if flagged]
