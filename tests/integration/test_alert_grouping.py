"""Alerts people can act on, on the real broker: one alert per pattern, partition and cooldown
window of event time, a summary that carries the count, identical whatever happens to the agent
(kill -9, rebalances); operator feedback mutes a pattern; ``group_by = "event"`` as before.

The storm: 5,000 anomalous events of three spam-like patterns (certain anomalies for the
BGL-trained bundle; their numbers re-drawn on every event, so raw texts never repeat while their
patterns do) and 500 held-out BGL lines, over four partitions, with Kafka timestamps an hour ago
spanning more than three cooldowns, some out of order. What must come out is computed from the
records alone by ``grouping_reference.expected`` — the documented rule written plainly — and
every run, crashed or rebalanced, must publish exactly that.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    agent_env,
    bgl_lines,
    cli,
    json_records,
    offline_anomalies,
    pipeline_settings,
    produce,
    read_committed,
    wait_caught_up,
    wait_until,
)
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from grouping_reference import Published, expected, published
from kafka_fixtures import GroupFactory, TopicFactory

from agent.config import ConfigError, Settings
from agent.model.bundle import load_bundle
from agent.pipeline import Pipeline, load_model
from exporters.alerts import pattern_id
from exporters.metrics import AgentMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEMPLATES = (
    "WINNER!! You have been selected to receive a {a} pound prize. Call 0906{b} to claim, code {c}",
    "URGENT! Your mobile number {a} was awarded a {b} GBP bonus caller prize, call 09061{c} now",
    "ALERT: your account {a} has been suspended. Verify your identity at 0800{b} within {c} hours",
)
PARTITIONS = 4
COOLDOWN_S = 60.0
STORM_EVENTS = 5_000
NORMAL_EVENTS = 500
SPAN_MS = 200_000  # > 3 cooldowns of event time
COMMITTED = 'anomaly_agent_transactions_total{result="committed"}'


@dataclass(frozen=True)
class Storm:
    """The produced records and what must be published for them."""

    topics: AgentTopics
    expected: list[Published]
    anomalous: int


def spam(rng: random.Random, template: str) -> str:
    return template.format(
        a=rng.randint(100, 99_999), b=rng.randint(1_000, 999_999), c=rng.randint(10, 9_999)
    )


def make_storm(
    bootstrap: str, topics: AgentTopics, bundle: Path, datasets_dir: Path, work: Path, *, seed: int
) -> Storm:
    """Produce the storm with explicit partitions and timestamps; compute what it must publish."""
    rng = random.Random(seed)
    normal, _ = bgl_lines(datasets_dir)
    texts = [spam(rng, rng.choice(TEMPLATES)) for _ in range(STORM_EVENTS)]
    texts += rng.sample(normal[600:], NORMAL_EVENTS)
    rng.shuffle(texts)
    events = [{"text": t, "service": "sms-gw", "seq": i} for i, t in enumerate(texts)]
    flagged = offline_anomalies(bundle, events, work)  # what scores anomalous, normal lines included
    prepare = load_bundle(bundle).text_prep.prepare
    base = int(time.time() * 1000) - 3_600_000
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    rows: list[tuple[int, int, str | None, int]] = []
    next_offset = [0] * PARTITIONS
    for i, event in enumerate(events):
        partition = rng.randrange(PARTITIONS)
        ts = base + i * SPAN_MS // len(events) - (rng.randint(0, 20_000) if rng.random() < 0.05 else 0)
        producer.produce(topics.input, json.dumps(event).encode(), partition=partition, timestamp=ts)
        producer.poll(0)
        template = prepare(event["text"]) if flagged[i] else None
        rows.append((partition, ts, template, next_offset[partition]))
        next_offset[partition] += 1
    assert producer.flush(60) == 0
    return Storm(topics, expected(rows, int(COOLDOWN_S * 1000)), sum(flagged))


def storm_topics(make_topic: TopicFactory, make_group: GroupFactory) -> AgentTopics:
    return AgentTopics(make_topic(PARTITIONS), make_topic(1), make_topic(1), make_group())


def documents(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"") for m in read_committed(bootstrap, topic, quiet_s=0.5)]


def wait_published(
    bootstrap: str, storm: Storm, *, timeout: float, tick: Callable[[], None] | None = None
) -> None:
    """Until the alert topic holds exactly what the storm must publish (then a last look: no more)."""
    deadline = time.monotonic() + timeout
    got: list[Published] = []
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        got = published(documents(bootstrap, storm.topics.alerts))
        if len(got) >= len(storm.expected):
            break
        time.sleep(1.0)
    assert got == storm.expected, _difference(got, storm.expected)
    docs = documents(bootstrap, storm.topics.alerts)
    assert len({d["id"] for d in docs}) == len(docs), "a record published twice"
    counted = sum(1 if d["kind"] == "alert" else d["group"]["suppressed"] for d in docs)
    assert counted == storm.anomalous, "every anomalous event is an alert or counted in a summary"
    kinds = Counter(d["kind"] for d in docs)
    print(
        "grouping:",
        json.dumps(
            {"anomalous_events": storm.anomalous, "alerts": kinds["alert"], "summaries": kinds["summary"]}
        ),
    )


def _difference(got: list[Published], want: list[Published]) -> str:
    missing = Counter(want) - Counter(got)
    extra = Counter(got) - Counter(want)
    return f"{len(got)} published, {len(want)} expected; missing {list(missing)[:5]}, extra {list(extra)[:5]}"


def grouped(bootstrap: str, agent_topics: AgentTopics, bundle: Path, **sections: Any) -> Settings:
    """In-process settings with alert grouping on (the helpers' default is one alert per event)."""
    alerts = {"group_by": "pattern", "cooldown_seconds": COOLDOWN_S, **sections.pop("alerts", {})}
    return pipeline_settings(
        bootstrap,
        agent_topics,
        bundle,
        instance_id="grouping-agent",
        batch_size=64,
        alerts=alerts,
        **sections,
    )


def grouped_env(storm: Storm, bootstrap: str, bundle: Path, instance: str, batch: int) -> dict[str, str]:
    return agent_env(
        bootstrap, storm.topics, bundle, instance_id=instance, batch__max_size=str(batch),
        alerts__group_by="pattern", alerts__cooldown_seconds=str(COOLDOWN_S),
    )  # fmt: skip


def test_a_storm_is_one_alert_per_pattern_partition_and_window(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    storm = make_storm(
        kafka_bootstrap, storm_topics(make_topic, make_group), agent_bundle, datasets_dir, tmp_path, seed=3
    )
    # The storm's spam is 3 patterns: its alerts are a few per pattern, partition and window (the
    # held-out BGL lines that score anomalous are alerts of their own patterns).
    spam_prefixes = tuple(t.split(" ")[0] for t in TEMPLATES)
    spam_alerts = sum(1 for e in storm.expected if e[0] == "alert" and e[3].startswith(spam_prefixes))
    summaries = [e for e in storm.expected if e[0] == "summary"]
    assert spam_alerts < STORM_EVENTS / 50 and len(summaries) >= 3 * PARTITIONS * len(TEMPLATES)
    metrics = AgentMetrics(batch_max_size=64)
    with Pipeline(
        grouped(kafka_bootstrap, storm.topics, agent_bundle), load_model(agent_bundle), metrics=metrics
    ) as pipeline:
        pipeline.run(max_messages=STORM_EVENTS + NORMAL_EVENTS, idle_timeout_s=60)
        # The stream ended an hour ago: the last windows close on the wall clock once the
        # partitions have been quiet for a few seconds.
        wait_published(kafka_bootstrap, storm, timeout=60, tick=lambda: pipeline.run(idle_timeout_s=1.0))

    docs = documents(kafka_bootstrap, storm.topics.alerts)
    for d in docs:
        assert d["pattern"]["id"] == pattern_id(load_bundle(agent_bundle).model_id, d["pattern"]["template"])
        assert d["group"]["cooldown_seconds"] == COOLDOWN_S
    spam_alert = next(d for d in docs if d["kind"] == "alert" and d["text"].startswith("WINNER"))
    assert spam_alert["pattern"]["known"] is False and len(spam_alert["neighbours"]) == 3
    assert all(n["similarity"] < 0.9 for n in spam_alert["neighbours"])
    sample = metrics.registry.get_sample_value
    assert sample("anomaly_agent_alerts_published_total") == len(storm.expected)
    assert sample("anomaly_agent_alert_summaries_published_total") == len(summaries)
    assert sample("anomaly_agent_alerts_suppressed_total") == sum(e[4] for e in summaries)


def test_kill_9_mid_storm_five_times_publishes_the_same(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """The restarted agent restores the windows from the changelog: no second "first" alert of a
    window, no count lost or doubled — the output is what an uninterrupted run publishes."""
    storm = make_storm(
        kafka_bootstrap, storm_topics(make_topic, make_group), agent_bundle, datasets_dir, tmp_path, seed=5
    )
    env = grouped_env(storm, kafka_bootstrap, agent_bundle, "grouping-crash", batch=8)
    rng = random.Random(9)
    for life in range(5):
        agent = AgentProcess(env, tmp_path / f"agent-{life}.log")
        agent_processes.append(agent)
        wait_until(lambda a=agent: a.metric(COMMITTED) >= 1, timeout=90, what="the agent's first commit")
        time.sleep(rng.uniform(0.2, 1.5))
        agent.kill()
    final = AgentProcess(env, tmp_path / "agent-final.log")
    agent_processes.append(final)
    wait_caught_up(kafka_bootstrap, storm.topics.group, storm.topics.input, timeout=180)
    wait_published(kafka_bootstrap, storm, timeout=60)
    assert final.terminate() == 0, final.tail()


def test_a_member_leaving_and_rejoining_mid_storm_publishes_the_same(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """Two agents; the second joins mid-storm (partitions move to it with their windows), leaves
    (SIGTERM) and joins again: the partitions' grouping state follows them each time."""
    storm = make_storm(
        kafka_bootstrap, storm_topics(make_topic, make_group), agent_bundle, datasets_dir, tmp_path, seed=7
    )
    first = AgentProcess(
        grouped_env(storm, kafka_bootstrap, agent_bundle, "grouping-a", 4), tmp_path / "a.log"
    )
    agent_processes.append(first)
    wait_until(lambda: first.metric(COMMITTED) >= 5, timeout=90, what="the first agent's commits")
    second_env = grouped_env(storm, kafka_bootstrap, agent_bundle, "grouping-b", 4)
    for life in range(2):
        second = AgentProcess(second_env, tmp_path / f"b-{life}.log")
        agent_processes.append(second)
        wait_until(lambda s=second: s.metric(COMMITTED) >= 3, timeout=90, what="the second agent's commits")
        if life == 0:
            assert second.terminate() == 0, second.tail()
    wait_caught_up(kafka_bootstrap, storm.topics.group, storm.topics.input, timeout=180)
    wait_published(kafka_bootstrap, storm, timeout=60)
    restored = first.log().count("grouping state restored") + sum(
        p.log().count("grouping state restored") for p in agent_processes[1:]
    )
    assert restored >= 3, "partitions moved between the agents with their state"


def test_group_by_event_alerts_every_anomalous_event(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
) -> None:
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    rng = random.Random(4)
    events = [{"text": spam(rng, t), "seq": i} for i, t in enumerate(TEMPLATES * 4)]
    produce(kafka_bootstrap, topics.input, json_records(events))
    settings = grouped(kafka_bootstrap, topics, agent_bundle, alerts={"group_by": "event"})
    with Pipeline(settings, load_model(agent_bundle, intra_op_threads=1)) as pipeline:
        pipeline.run(max_messages=len(events), idle_timeout_s=60)
    docs = documents(kafka_bootstrap, topics.alerts)
    assert sorted(d["source"]["offset"] for d in docs) == list(range(len(events)))
    assert {d["kind"] for d in docs} == {"alert"} and all(d["group"] is None for d in docs)


def test_a_pattern_marked_normal_mid_stream_stops_alerting_until_unmarked(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
) -> None:
    """``anomaly-agent feedback --normal`` while the agent runs: once the agent has read the
    verdict, the pattern's events alert no more (counted as muted); a restarted agent reads the
    verdict before its first batch; ``--anomaly`` un-marks it and the pattern alerts again."""
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    feedback = make_topic(1)
    model = load_model(agent_bundle, intra_op_threads=1)
    prepare = model.bundle.text_prep.prepare
    rng = random.Random(6)
    muted = pattern_id(model.bundle.model_id, prepare(spam(rng, TEMPLATES[0])))
    settings = grouped(
        kafka_bootstrap, topics, agent_bundle, topics={"feedback": feedback}, alerts={"group_by": "event"}
    )

    def verdict(flag: str) -> None:
        env = agent_env(kafka_bootstrap, topics, agent_bundle, instance_id="cli", topics__feedback=feedback)
        result = cli("feedback", "--pattern", muted, flag, "--by", "oncall", "--reason", "spam", env=env)
        assert result.returncode == 0, result.stderr
        assert f"pattern {muted} marked {flag.strip('-')} on {feedback}" in result.stdout

    def send(template: str, n: int) -> None:
        produce(
            kafka_bootstrap,
            topics.input,
            json_records([{"text": spam(rng, template), "seq": i} for i in range(n)]),
        )

    def alerted(pattern: str) -> int:
        return sum(1 for d in documents(kafka_bootstrap, topics.alerts) if d["pattern"]["id"] == pattern)

    metrics = AgentMetrics(batch_max_size=64)
    sample = metrics.registry.get_sample_value
    with Pipeline(settings, model, metrics=metrics) as pipeline:
        send(TEMPLATES[0], 3)
        pipeline.run(max_messages=3, idle_timeout_s=60)
        assert alerted(muted) == 3
        verdict("--normal")  # mid-stream: the running agent follows the feedback topic
        deadline = time.monotonic() + 30
        while sample("anomaly_agent_patterns_muted") != 1:
            assert time.monotonic() < deadline, "the verdict did not reach the running agent"
            pipeline.run(idle_timeout_s=0.3)
        send(TEMPLATES[0], 4)
        send(TEMPLATES[1], 2)
        pipeline.run(max_messages=6, idle_timeout_s=60)
        assert alerted(muted) == 3, "no alert for the pattern after the verdict"
        assert sample("anomaly_agent_alerts_muted_total") == 4

    send(TEMPLATES[0], 2)
    metrics = AgentMetrics(batch_max_size=64)
    sample = metrics.registry.get_sample_value
    with Pipeline(settings, model, metrics=metrics) as pipeline:  # a restart reads the verdict first
        pipeline.run(max_messages=2, idle_timeout_s=60)
        assert alerted(muted) == 3 and sample("anomaly_agent_alerts_muted_total") == 2
        verdict("--anomaly")
        deadline = time.monotonic() + 30
        while sample("anomaly_agent_patterns_muted") != 0:
            assert time.monotonic() < deadline, "the un-mark did not reach the running agent"
            pipeline.run(idle_timeout_s=0.3)
        send(TEMPLATES[0], 1)
        pipeline.run(max_messages=1, idle_timeout_s=30)
    assert alerted(muted) == 4, "un-marked: the pattern alerts again"


@pytest.mark.parametrize(
    ("partitions", "config", "message"),
    [
        (2, {"cleanup.policy": "compact"}, "has 2 partition(s), fewer than input topic"),
        (PARTITIONS, {"cleanup.policy": "delete"}, "has cleanup.policy=delete"),
    ],
    ids=["too-few-partitions", "not-compacted"],
)
def test_a_changelog_that_cannot_hold_the_state_stops_start_up(
    partitions: int,
    config: dict[str, str],
    message: str,
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
) -> None:
    topics = storm_topics(make_topic, make_group)
    make_topic(partitions, name=f"{topics.alerts}.groups", config=config)
    pipeline = Pipeline(grouped(kafka_bootstrap, topics, agent_bundle), load_model(agent_bundle))
    with pipeline, pytest.raises(ConfigError, match=re.escape(message)):
        pipeline.start()


def test_a_missing_changelog_is_created_compacted_with_a_partition_per_input_partition(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
) -> None:
    topics = storm_topics(make_topic, make_group)
    with Pipeline(grouped(kafka_bootstrap, topics, agent_bundle), load_model(agent_bundle)) as pipeline:
        pipeline.start()
    changelog = f"{topics.alerts}.groups"
    try:
        metadata = kafka_admin.list_topics(changelog, timeout=10)
        assert len(metadata.topics[changelog].partitions) == PARTITIONS
        resource = ConfigResource(ResourceType.TOPIC, changelog)
        entries = kafka_admin.describe_configs([resource])[resource].result(timeout=10)
        assert entries["cleanup.policy"].value == "compact"
    finally:
        kafka_admin.delete_topics([changelog])
