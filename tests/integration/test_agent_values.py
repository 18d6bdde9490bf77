"""The value view through the running agent on a real broker (issue 19).

A bundle trained with ``anomaly-agent train`` and nothing but the input flags (the defaults: masked
text, the value view on) on the first 1,000 lines of the HDFS sample. The stream replayed to
``anomaly-agent run`` holds held-out HDFS lines of the next day, a few foreign lines (BGL: anomalous
by their pattern) and probes whose only anomaly is a value: a known line with a traversal path in
its ``allocateBlock`` path slot, and one with a block size far beyond any seen, each beside the
same line with its normal value. The probes' patterns are normal (the pattern alone scores below
1), so only the value view can flag them.

Checked: the value probes alert through the running agent with ``value`` filled (``slot``,
``placeholder``, ``value``, ``expected``), their normal twins do not, and the agent alerts on
exactly the events ``anomaly-agent score`` flags on the same input, with the same scores and the
same ``value`` objects.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    agent_env,
    alert_sources,
    bgl_lines,
    cli,
    json_records,
    produce,
    read_committed,
    wait_caught_up,
)
from jsonschema import Draft202012Validator
from kafka_fixtures import GroupFactory, TopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "alert.schema.json"
N_TRAIN = 1000
TRAVERSAL = "../../../../../../etc/passwd"
HUGE = "670000000000000"


def _hdfs_lines(datasets_dir: Path) -> list[str]:
    text = (datasets_dir / "hdfs_2k" / "HDFS_2k.log").read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hdfs_bundle(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path, embedder_dir: Path) -> Path:
    """train's defaults on the first 1,000 HDFS lines, through the CLI."""
    work = tmp_path_factory.mktemp("values-bundle")
    train = work / "train.jsonl"
    lines = _hdfs_lines(datasets_dir)[:N_TRAIN]
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    out = work / "bundle"
    result = cli(
        "train", "--input", str(train), "--text-field", "text",
        "--embedder", str(embedder_dir), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, f"anomaly-agent train failed:\n{result.stderr}"
    summary = json.loads(result.stdout)
    assert summary["text_preparation"]["mask"] is True
    assert summary["training"]["value_view"]["fitted"] is True
    return out


def _events(datasets_dir: Path) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """JSON events ``{"text", "host", "seq"}`` and, per probe, (its index, its normal twin's index)."""
    rng = random.Random(19)
    later = _hdfs_lines(datasets_dir)[N_TRAIN:]
    allocate = [line for line in later if "NameSystem.allocateBlock: /" in line]
    received = [line for line in later if "Received block" in line and "of size 67108864" in line]
    texts = rng.sample(later, 60) + rng.sample(bgl_lines(datasets_dir)[0], 6)
    pairs: dict[str, tuple[str, str]] = {}
    for i, line in enumerate(rng.sample(allocate, 2)):
        odd = re.sub(r"allocateBlock: \S+", f"allocateBlock: {TRAVERSAL}", line)
        pairs[f"traversal-{i}"] = (odd, line)
    for i, line in enumerate(rng.sample(received, 2)):
        pairs[f"huge-{i}"] = (line.replace("of size 67108864", f"of size {HUGE}"), line)
    texts += [t for pair in pairs.values() for t in pair]
    rng.shuffle(texts)
    events = [{"text": t, "host": f"node-{i % 5}", "seq": i} for i, t in enumerate(texts)]
    at = {t: i for i, t in enumerate(texts)}
    return events, {name: (at[odd], at[normal]) for name, (odd, normal) in pairs.items()}


def _score(bundle: Path, events: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    path = work / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    result = cli("score", "--bundle", str(bundle), "--input", str(path), "--text-field", "text")
    assert result.returncode == 0, f"anomaly-agent score failed:\n{result.stderr}"
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == len(events)
    return rows


def test_an_unusual_value_alone_alerts_through_the_agent(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    hdfs_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    events, probes = _events(datasets_dir)
    rows = _score(hdfs_bundle, events, tmp_path)
    # The probes are what the test is about: only their value differs from a normal line's.
    for name, (odd, normal) in probes.items():
        probe, twin = rows[odd], rows[normal]
        assert probe["text"] == twin["text"], f"{name}: one pattern, only the value differs"
        assert probe["pattern_score"] == twin["pattern_score"] <= 1.0, f"{name}: the pattern is normal"
        assert not twin["is_anomaly"] and twin["value"] is None, f"{name}: its normal twin is quiet"
        assert probe["is_anomaly"] and probe["value"] is not None, f"{name}: the value alone alerts"
    anomalous = {i for i, row in enumerate(rows) if row["is_anomaly"]}
    # Foreign lines alert by their pattern; most of the next day's HDFS lines stay quiet.
    assert len(anomalous) <= len(events) // 3, f"{len(anomalous)} anomalies among {len(events)}"

    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    positions = produce(kafka_bootstrap, topics.input, json_records(events))
    event_at = {position: i for i, position in enumerate(positions)}
    agent = AgentProcess(
        agent_env(kafka_bootstrap, topics, hdfs_bundle, instance_id="values-agent"), tmp_path / "agent.log"
    )
    agent_processes.append(agent)
    wait_caught_up(kafka_bootstrap, topics.group, topics.input, timeout=90)
    assert agent.terminate() == 0, agent.tail()

    published = read_committed(kafka_bootstrap, topics.alerts)
    alerts = [json.loads(m.value() or b"") for m in published]
    sources = [event_at[s] for s in alert_sources(published)]
    assert len(sources) == len(set(sources)), "one alert per anomalous event"
    assert set(sources) == anomalous, (
        f"missing alerts for events {sorted(anomalous - set(sources))}, "
        f"unexpected alerts for {sorted(set(sources) - anomalous)}"
    )
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    by_event: dict[int, dict[str, Any]] = {}
    for alert in alerts:
        validator.validate(alert)
        i = event_at[(alert["source"]["partition"], alert["source"]["offset"])]
        by_event[i] = alert
        assert alert["text"] == events[i]["text"]
        assert alert["score"] == pytest.approx(rows[i]["score"], rel=1e-4)
        assert alert["value"] == rows[i]["value"], f"event {i}: the agent's value object is score's"
    for name, (odd, normal) in probes.items():
        value = by_event[odd]["value"]
        assert normal not in by_event
        assert value is not None and set(value) == {"slot", "placeholder", "value", "expected"}, name
        if name.startswith("traversal"):
            assert value["placeholder"] == "<PATH>" and value["value"] == TRAVERSAL
            assert value["expected"]["feature"] == "dotdot" and value["expected"]["range"] == [0.0, 0.0]
        else:
            assert value["placeholder"] == "<NUM>" and value["value"] == HUGE
            assert value["expected"]["feature"] == "magnitude"
            assert value["expected"]["range"][1] < float(HUGE)
