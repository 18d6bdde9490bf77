"""Alerts people can act on, on the real broker: one alert per pattern and cooldown window, a
summary that carries the count, exact across kill -9; operator feedback mutes a pattern.

The storm: two kinds of spam-like messages (certain anomalies for the BGL-trained bundle) with
their numbers re-drawn on every event, so raw texts never repeat while their patterns do, mixed
into held-out normal BGL lines.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    StreamProducer,
    agent_env,
    bgl_lines,
    cli,
    json_records,
    pipeline_settings,
    produce,
    read_committed,
    wait_caught_up,
    wait_until,
)
from confluent_kafka import Message
from kafka_fixtures import GroupFactory, TopicFactory

from agent.config import Settings
from agent.feedback import Verdict
from agent.pipeline import Pipeline, load_model
from agent.textprep import TextPreparation
from exporters.alerts import pattern_id
from exporters.metrics import AgentMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STORM_TEMPLATES = (
    "WINNER!! You have been selected to receive a {a} pound prize. Call 0906{b} to claim, code {c}",
    "URGENT! Your mobile number {a} was awarded a {b} GBP bonus caller prize, call 09061{c} now",
)


def storm_events(datasets_dir: Path, *, storm: int, normal: int, seed: int) -> list[dict[str, Any]]:
    """``storm`` events of each template (numbers re-drawn) and ``normal`` BGL lines, shuffled."""
    rng = random.Random(seed)
    normal_lines, _ = bgl_lines(datasets_dir)
    texts = [
        t.format(a=rng.randint(100, 99_999), b=rng.randint(1_000, 999_999), c=rng.randint(10, 9_999))
        for t in STORM_TEMPLATES
        for _ in range(storm)
    ]
    texts += rng.sample(normal_lines[600:], normal)
    rng.shuffle(texts)
    return [{"text": text, "host": f"node-{i % 3}", "seq": i} for i, text in enumerate(texts)]


def templates(events: list[dict[str, Any]]) -> dict[int, str]:
    prep = TextPreparation()
    return {e["seq"]: prep.prepare(e["text"]) for e in events if e["text"].startswith(("WINNER", "URGENT"))}


def documents(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"") for m in messages]


def grouped(bootstrap: str, agent_topics: AgentTopics, bundle: Path, **sections: Any) -> Settings:
    """In-process settings with alert grouping on (the helpers' default is one alert per event)."""
    alerts = {"group_by": "pattern", **sections.pop("alerts", {})}
    return pipeline_settings(
        bootstrap,
        agent_topics,
        bundle,
        instance_id="grouping-agent",
        batch_size=32,
        alerts=alerts,
        **sections,
    )


def test_a_storm_is_one_alert_per_pattern_and_partition_then_one_summary(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
) -> None:
    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    events = storm_events(datasets_dir, storm=30, normal=60, seed=3)
    storm = templates(events)
    positions = produce(kafka_bootstrap, topics.input, json_records(events))
    seq_at = {position: i for i, position in enumerate(positions)}
    expected = Counter((positions[seq][0], template) for seq, template in storm.items())
    assert len(expected) == 4, "both patterns on both partitions"

    cooldown = 4.0
    settings = grouped(kafka_bootstrap, topics, agent_bundle, alerts={"cooldown_seconds": cooldown})
    model = load_model(agent_bundle, intra_op_threads=1)
    metrics = AgentMetrics(batch_max_size=32)
    with Pipeline(settings, model, metrics=metrics) as pipeline:
        pipeline.run(max_messages=len(events), idle_timeout_s=60)
        first = documents(read_committed(kafka_bootstrap, topics.alerts, quiet_s=0.5))
        # No traffic now: the windows end and their summaries come out of the idle loop.
        pipeline.run(idle_timeout_s=cooldown + 3)

    published = documents(read_committed(kafka_bootstrap, topics.alerts))
    # Some held-out normal lines score anomalous too (their own patterns); the storm is checked.
    kinds = set(storm.values())
    alerts = [d for d in published if d["kind"] == "alert" and d["pattern"]["template"] in kinds]
    summaries = [d for d in published if d["kind"] == "summary" and d["pattern"]["template"] in kinds]
    first_storm = [d["kind"] for d in first if d["pattern"]["template"] in kinds]
    assert first_storm == ["alert"] * 4, "one alert per (partition, pattern), at once"
    assert len(alerts) == 4 and len(summaries) == 4, [(d["kind"], d["source"]) for d in alerts + summaries]

    model_id = model.bundle.model_id
    for alert in alerts:
        key = (alert["source"]["partition"], alert["pattern"]["template"])
        seqs = [s for s, t in storm.items() if (positions[s][0], t) == key]
        assert seq_at[(alert["source"]["partition"], alert["source"]["offset"])] == min(
            seqs, key=lambda s: positions[s][1]
        ), "the alert is the pattern's first event on the partition"
        assert alert["pattern"]["id"] == pattern_id(model_id, alert["pattern"]["template"])
        assert alert["pattern"]["known"] is False and alert["group"]["suppressed"] == 0
        assert alert["group"]["cooldown_seconds"] == cooldown
        assert len(alert["neighbours"]) == 3, "the nearest normal training patterns"
        assert all(n["similarity"] < 0.9 for n in alert["neighbours"])
        assert alert["neighbours"] == sorted(alert["neighbours"], key=lambda n: -n["similarity"])
    counted = Counter()
    for summary in summaries:
        key = (summary["source"]["partition"], summary["pattern"]["template"])
        counted[key] = 1 + summary["group"]["suppressed"]
        assert summary["group"]["window_start"] < summary["group"]["window_end"]
        assert summary["score"] == summary["group"]["max_score"] > 1.0
        assert seq_at[(summary["source"]["partition"], summary["source"]["offset"])] in storm
    assert counted == expected, "alert + summary.suppressed = every anomalous event of the window"
    assert len({d["id"] for d in published}) == len(published)

    sample = metrics.registry.get_sample_value
    every_summary = [d for d in published if d["kind"] == "summary"]
    assert sample("anomaly_agent_alerts_suppressed_total") == sum(
        d["group"]["suppressed"] for d in every_summary
    )
    assert sample("anomaly_agent_alert_summaries_published_total") == len(every_summary)
    assert sample("anomaly_agent_alerts_published_total") == len(published)


def test_group_by_event_alerts_every_anomalous_event(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
) -> None:
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    events = storm_events(datasets_dir, storm=5, normal=0, seed=4)
    produce(kafka_bootstrap, topics.input, json_records(events))
    settings = grouped(kafka_bootstrap, topics, agent_bundle, alerts={"group_by": "event"})
    with Pipeline(settings, load_model(agent_bundle, intra_op_threads=1)) as pipeline:
        pipeline.run(max_messages=len(events), idle_timeout_s=60)
    published = documents(read_committed(kafka_bootstrap, topics.alerts))
    assert len(published) == 10 and {d["kind"] for d in published} == {"alert"}
    assert all(d["group"] is None for d in published)


def test_grouping_is_exact_across_kill_9(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """kill -9 mid-storm, three times: the restarted agent restores the windows from the changelog,
    so there is exactly one alert per (partition, pattern) and the summaries' counts add up to
    every anomalous event — no second "first" alert, no lost count."""
    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    events = storm_events(datasets_dir, storm=60, normal=60, seed=5)
    storm = templates(events)
    cooldown = 40.0
    env = agent_env(
        kafka_bootstrap,
        topics,
        agent_bundle,
        instance_id="grouping-crash",
        batch__max_size="8",
        alerts__group_by="pattern",
        alerts__cooldown_seconds=str(cooldown),
    )
    stream = StreamProducer(kafka_bootstrap, topics.input, json_records(events), rate=12.0)
    rng = random.Random(9)
    for life in range(3):
        agent = AgentProcess(env, tmp_path / f"agent-{life}.log")
        agent_processes.append(agent)
        wait_until(
            lambda a=agent: a.metric('anomaly_agent_transactions_total{result="committed"}') >= 2,
            timeout=90,
            what="the agent's first commits",
        )
        time.sleep(rng.uniform(0.5, 2.0))
        agent.kill()
    final = AgentProcess(env, tmp_path / "agent-final.log")
    agent_processes.append(final)
    positions = stream.join(timeout=120)
    wait_caught_up(kafka_bootstrap, topics.group, topics.input, timeout=120)
    expected = Counter((positions[seq][0], template) for seq, template in storm.items())
    kinds = set(storm.values())

    def storm_summaries() -> int:
        messages = read_committed(kafka_bootstrap, topics.alerts, quiet_s=0.5)
        return sum(
            1 for d in documents(messages) if d["kind"] == "summary" and d["pattern"]["template"] in kinds
        )

    wait_until(
        lambda: storm_summaries() >= len(expected), timeout=cooldown + 60, interval=2, what="the summaries"
    )
    assert final.terminate() == 0, final.tail()

    published = documents(read_committed(kafka_bootstrap, topics.alerts))
    published = [d for d in published if d["pattern"]["template"] in kinds]
    alerts = Counter(
        (d["source"]["partition"], d["pattern"]["template"]) for d in published if d["kind"] == "alert"
    )
    assert alerts == Counter(dict.fromkeys(expected, 1)), "exactly one alert per (partition, pattern)"
    counted: Counter[tuple[int, str]] = Counter()
    for d in published:
        if d["kind"] == "summary":
            counted[(d["source"]["partition"], d["pattern"]["template"])] += d["group"]["suppressed"]
    assert {k: counted[k] + 1 for k in expected} == dict(expected), "no count lost or doubled"
    assert len({d["id"] for d in published}) == len(published), "no record published twice"


def test_a_pattern_marked_normal_stops_alerting_until_unmarked(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    datasets_dir: Path,
) -> None:
    """``anomaly-agent feedback`` marks a pattern normal: an agent started afterwards reads the
    verdict before its first batch and does not alert the pattern (counted as muted); un-marking
    reaches the running agent and the pattern alerts again."""
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    feedback = make_topic(1)
    model = load_model(agent_bundle, intra_op_threads=1)
    prep = TextPreparation()
    winner, urgent = (prep.prepare(t.format(a=1, b=2, c=3)) for t in STORM_TEMPLATES)
    muted = pattern_id(model.bundle.model_id, winner)

    def verdict(value: Verdict) -> None:
        env = agent_env(kafka_bootstrap, topics, agent_bundle, instance_id="cli", topics__feedback=feedback)
        result = cli(
            "feedback", "--pattern", muted, "--verdict", value.value, "--by", "oncall", "--reason", "spam",
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"pattern {muted} marked {value.value} on {feedback}" in result.stdout

    verdict(Verdict.NORMAL)
    events = storm_events(datasets_dir, storm=6, normal=0, seed=6)
    produce(kafka_bootstrap, topics.input, json_records(events))
    settings = grouped(
        kafka_bootstrap, topics, agent_bundle, topics={"feedback": feedback}, alerts={"group_by": "event"}
    )
    metrics = AgentMetrics(batch_max_size=32)
    sample = metrics.registry.get_sample_value
    with Pipeline(settings, model, metrics=metrics) as pipeline:
        pipeline.run(max_messages=len(events), idle_timeout_s=60)
        published = documents(read_committed(kafka_bootstrap, topics.alerts))
        assert {d["pattern"]["template"] for d in published} == {urgent}, "only the unmuted pattern alerts"
        assert len(published) == 6
        assert sample("anomaly_agent_alerts_muted_total") == 6
        assert sample("anomaly_agent_patterns_muted") == 1

        verdict(Verdict.ANOMALY)  # un-mark: the running agent follows the topic
        deadline = time.monotonic() + 30
        while sample("anomaly_agent_patterns_muted") != 0:
            assert time.monotonic() < deadline, "the un-mark did not reach the running agent"
            pipeline.run(idle_timeout_s=0.3)
        again = [e for e in events if e["text"].startswith("WINNER")][:1]
        produce(kafka_bootstrap, topics.input, json_records(again))
        pipeline.run(max_messages=1, idle_timeout_s=30)
    after = documents(read_committed(kafka_bootstrap, topics.alerts))
    assert len(after) == 7 and after[-1]["pattern"]["id"] == muted
