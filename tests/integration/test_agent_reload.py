"""Model hot reload in a running agent process: a watched bundle directory and SIGHUP.

Model A (the session bundle) runs; model B is the same detector and embedder written as a new
bundle (its text preparation differs only in a truncation length no event reaches, so it scores
these events exactly like A but has its own sha256). Replacing the live bundle directory with B
swaps the model between batches: events before the swap carry A's sha256 in their alerts, events
after it B's, none is lost or scored twice. A tampered bundle put in its place is refused and B
keeps running. With ``model.watch`` off, only SIGHUP reloads (with systemd's RELOADING=1/READY=1).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    NotifyListener,
    agent_env,
    alert_sources,
    json_records,
    make_events,
    offline_anomalies,
    offsets,
    produce,
    read_committed,
    wait_until,
)
from kafka_fixtures import GroupFactory, TopicFactory

from agent.model.bundle import Bundle, load_bundle, write_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


PROCESSED = "anomaly_agent_events_processed_total"
RELOADED = 'anomaly_agent_reloads_total{result="success"}'
REFUSED = 'anomaly_agent_reloads_total{result="failure"}'


def write_variant(source: Bundle, out: Path, shorter_by: int = 1) -> Bundle:
    """Another valid bundle: same embedder, detector and value view, text truncated ``shorter_by``
    characters earlier (no test event is that long, so it scores them like ``source``; its
    manifest differs)."""
    prep = dataclasses.replace(source.text_prep, max_chars=source.text_prep.max_chars - shorter_by)
    write_bundle(
        out,
        embedder_dir=source.embedder_dir,
        text_prep=prep,
        detector=source.detector,
        training_summary=source.manifest["training"],
        evaluation=source.manifest["evaluation"],
        values=source.values,
    )
    return load_bundle(out)


def swap_in(new: Path, live: Path) -> None:
    """Replace the live bundle directory by renames, as ``write_bundle`` does."""
    old = live.with_name(live.name + ".old")
    live.rename(old)
    new.rename(live)
    shutil.rmtree(old)


def model_info(agent: AgentProcess, bundle: Bundle) -> float:
    labels = f'detector="knn",model_id="{bundle.model_id}",sha256="{bundle.sha256}"'
    return agent.metric(f"anomaly_agent_model_info{{{labels}}}")


def test_watched_bundle_swaps_between_batches_and_refuses_a_tampered_one(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    live = tmp_path / "live-bundle"
    shutil.copytree(agent_bundle, live)
    model_a = load_bundle(live)
    model_b = write_variant(model_a, tmp_path / "staging-b")
    assert model_b.sha256 != model_a.sha256

    events = make_events(datasets_dir, normal=90, bgl_alerts=30, foreign=30, seed=41)
    expected = offline_anomalies(agent_bundle, events, tmp_path)
    batches = [events[0:50], events[50:100], events[100:150]]

    agent = AgentProcess(
        agent_env(
            kafka_bootstrap,
            topics,
            live,
            instance_id="reload-watch",
            model__watch="true",
            model__watch_interval_seconds="0.5",
        ),
        tmp_path / "agent.log",
    )
    agent_processes.append(agent)
    agent.wait_ready()
    assert model_info(agent, model_a) == 1

    positions = produce(kafka_bootstrap, topics.input, json_records(batches[0]))
    wait_until(lambda: agent.metric(PROCESSED) >= 50, timeout=60, what="batch 1")

    swap_in(tmp_path / "staging-b", live)
    wait_until(lambda: agent.metric(RELOADED) == 1, timeout=30, what="the reload of bundle B")
    positions += produce(kafka_bootstrap, topics.input, json_records(batches[1]))
    wait_until(lambda: agent.metric(PROCESSED) >= 100, timeout=60, what="batch 2")
    assert model_info(agent, model_b) == 1
    assert model_info(agent, model_a) == 0, "exactly one model_info series: the model in use"

    # A new bundle (its own manifest) with a file changed after it was written.
    tampered = tmp_path / "staging-tampered"
    write_variant(model_a, tampered, shorter_by=2)
    detector_file = next(p for p in sorted((tampered / "detector").iterdir()) if p.is_file())
    detector_file.write_bytes(detector_file.read_bytes() + b"\0")
    swap_in(tampered, live)
    wait_until(lambda: agent.metric(REFUSED) == 1, timeout=30, what="the tampered bundle to be refused")
    positions += produce(kafka_bootstrap, topics.input, json_records(batches[2]))
    wait_until(lambda: agent.metric(PROCESSED) >= 150, timeout=60, what="batch 3 on the old model")
    assert model_info(agent, model_b) == 1
    assert agent.metric(RELOADED) == 1
    assert "reload refused, the running model stays" in agent.log()
    assert agent.terminate() == 0, agent.tail()

    # Nothing lost, nothing scored twice, every alert from the model in use at the time.
    committed, ends = offsets(kafka_bootstrap, topics.group, topics.input)
    assert committed == ends
    event_at = {position: i for i, position in enumerate(positions)}
    messages = read_committed(kafka_bootstrap, topics.alerts)
    alerts = [json.loads(m.value() or b"") for m in messages]
    sources = alert_sources(messages)
    assert len(sources) == len(set(sources)), "an event was scored twice across the reload"
    assert {event_at[s] for s in sources} == {i for i, flagged in enumerate(expected) if flagged}
    for alert in alerts:
        index = event_at[(alert["source"]["partition"], alert["source"]["offset"])]
        model = model_a if index < 50 else model_b
        assert alert["model"] == {"id": model.model_id, "sha256": model.sha256}, index


def test_sighup_reloads_when_watching_is_off(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    notify: NotifyListener,
    tmp_path: Path,
) -> None:
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    live = tmp_path / "live-bundle"
    shutil.copytree(agent_bundle, live)
    model_a = load_bundle(live)
    model_b = write_variant(model_a, tmp_path / "staging-b")
    agent = AgentProcess(
        agent_env(kafka_bootstrap, topics, live, instance_id="reload-hup", model__watch="false"),
        tmp_path / "agent.log",
        extra_env={"NOTIFY_SOCKET": notify.path},
    )
    agent_processes.append(agent)
    agent.wait_ready()

    swap_in(tmp_path / "staging-b", live)
    wait_until(lambda: "READY=1" in notify.lines(), timeout=10, what="READY=1")
    time.sleep(2.0)  # four default watch intervals of the other test: long enough to be noticed
    assert model_info(agent, model_a) == 1, "without model.watch a changed directory is not picked up"

    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: agent.metric(RELOADED) == 1, timeout=30, what="the SIGHUP reload")
    wait_until(lambda: model_info(agent, model_b) == 1, timeout=10, what="model B in use")
    lines = notify.lines()
    assert "RELOADING=1" in lines and lines.count("READY=1") == 2, lines
    assert agent.terminate() == 0, agent.tail()
