"""Scale-out on the real broker: two agents share a 4-partition topic while a stream flows.

Agent A starts alone; agent B joins the group mid-stream (a rebalance moves partitions to it);
later A leaves with SIGTERM (a rebalance moves them back to B), all while events keep arriving.
Every alert ``anomaly-agent score`` expects must be on the alert topic exactly once, and both
agents must have done part of the work (the alert's ``agent`` field says which one did).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    StreamProducer,
    agent_env,
    alert_sources,
    json_records,
    make_events,
    offline_anomalies,
    read_committed,
    wait_caught_up,
    wait_until,
)
from kafka_fixtures import GroupFactory, TopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


PROCESSED = "anomaly_agent_events_processed_total"


def test_join_and_leave_while_producing_loses_and_duplicates_nothing(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    topics = AgentTopics(make_topic(4), make_topic(1), make_topic(1), make_group())
    events = make_events(datasets_dir, normal=260, bgl_alerts=40, foreign=100, seed=31)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    anomalous = {i for i, flagged in enumerate(expected) if flagged}
    assert len(anomalous) >= 40

    def start(instance: str) -> AgentProcess:
        agent = AgentProcess(
            agent_env(kafka_bootstrap, topics, agent_bundle, instance_id=instance, batch__max_size="16"),
            tmp_path / f"{instance}.log",
        )
        agent_processes.append(agent)
        return agent

    a = start("agent-a")
    a.wait_ready()
    stream = StreamProducer(kafka_bootstrap, topics.input, json_records(events), rate=15)
    wait_until(lambda: a.metric(PROCESSED) >= 40, timeout=60, what="agent A processing")

    b = start("agent-b")  # joins: the group rebalances and B takes partitions over from A
    wait_until(lambda: b.metric(PROCESSED) >= 20, timeout=60, what="agent B processing")
    assert stream.produced < len(events), "B should join while the stream still flows"

    assert a.terminate() == 0, a.tail()  # leaves: B gets all four partitions
    assert stream.produced < len(events), "A should leave while the stream still flows"
    positions = stream.join(timeout=120)
    wait_caught_up(kafka_bootstrap, topics.group, topics.input, timeout=120)
    assert b.terminate() == 0, b.tail()

    event_at = {position: i for i, position in enumerate(positions)}
    alerts = read_committed(kafka_bootstrap, topics.alerts)
    by_event = Counter(event_at[s] for s in alert_sources(alerts))
    assert {i: n for i, n in by_event.items() if n > 1} == {}, "alerts duplicated across rebalances"
    assert set(by_event) == anomalous, (
        f"missing {sorted(anomalous - set(by_event))}, unexpected {sorted(set(by_event) - anomalous)}"
    )
    by_agent = Counter(json.loads(m.value() or b"")["agent"] for m in alerts)
    assert by_agent["agent-a"] > 0 and by_agent["agent-b"] > 0, f"alerts per agent: {dict(by_agent)}"
