"""Sessions through a real broker (issue 18): the agent's session alerts are exactly the offline
flags of ``anomaly-agent score --sessions``, and stay so through ``kill -9`` and rebalances.

The data is a slice of ``hdfs_sessions`` (loghub's HDFS block sessions, ``anomaly_label.csv``):
the blocks whose first line is among the sample's first 15,000 lines train the bundle through the
CLI (``train --detector knn --session-key-pattern '(blk_-?\\d+)' --session-time-field time
--session-labels anomaly_label.csv``: the anomalous blocks are left out of the session model);
every line of the blocks that start in the next 4,000 lines is replayed — about 3,000 lines of
118 blocks over 9 hours, 10 of them labelled anomalous — with each line's own time (shifted so
that the replay ended three hours ago) as its ``time`` field and its Kafka timestamp. Offline and
the agent therefore see the same records at the same event times; the gap (one hour), the caps
and the key are the model's.

**Why the block id is the record key.** A session lives in the tracker of its input partition
(docs/sessions.md, "Keys"): the agent cuts and scores the events of one partition, in that
partition's order and event time. Producing with the block id as the record key sends every line
of a block to one partition, in order, so each partition's tracker sees whole sessions and the
agent decides what ``score --sessions`` decides on the whole file. Keyed otherwise, a block's
lines would be spread over the three partitions: three partial sessions each, scored apart (and
counted in ``anomaly_agent_session_keys_split_total``).

What must come out:

- one alert per event (``alerts.group_by = "event"``): the ``session`` alerts are exactly the
  flagged sessions (id, key, first and last offset; a decisive one at its decisive step, the
  others with the close's event count and score), and the ``alert`` records exactly the lines
  ``anomaly-agent score`` flags;
- with grouping by signature (the product default, ``group_by = "pattern"``): one alert per
  signature, partition and cooldown, then a summary, so the alerted keys are flagged sessions, a
  (partition, signature) alerts when a flagged session has it, and the alerts plus the summaries'
  counts are the flagged sessions; open sessions go through the state changelog and are all
  tombstoned at the end;
- ``kill -9`` three times mid-stream, and a second agent joining and leaving mid-stream, publish
  exactly that run's records (ids, kinds, session keys, counts, scores);
- ``[sessions] enabled = false`` publishes exactly that run's records less the session alerts and
  their summaries, and keeps no session state.

The replay ended hours ago (event time), so the sessions still open when the input runs out close
on the wall clock once their partition is quiet and caught up (reason ``gap``; offline, the end
of the input closes them: ``end_of_input``, the same score). No assertion is timed: deadlines only
guard against hangs.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    agent_env,
    cli,
    expected_session_alerts,
    offsets,
    produce,
    published_session_alerts,
    read_committed,
    wait_until,
)
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kafka_fixtures import GroupFactory, TopicFactory, wait_for_topic

from exporters.alerts import alert_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = r"(blk_-?\d+)"
GAP_SECONDS = 3600.0
MAX_SECONDS = 172_800.0
TRAIN_BEFORE_LINE = 15_000  # blocks starting in the sample's first 15,000 lines train the bundle
REPLAY_LINES = 4_000  # every line of the blocks starting in the next 4,000 lines is replayed
ENDED_AGO_MS = 3 * 3_600_000  # the replay's last line: three hours ago
PARTITIONS = 3
COMMITTED = 'anomaly_agent_transactions_total{result="committed"}'
CLOSED = "anomaly_agent_sessions_closed_total"
CLOSED_BY_GAP = f'{CLOSED}{{reason="gap"}}'
DONE_TIMEOUT_S = 240.0  # against hangs only
# (id, kind, partition, offset, session key, session events, suppressed, score)
Outcome = tuple[str, str, int, int, str | None, int | None, int | None, float]


# ----------------------------------------------------------------------------- data and offline


@dataclass(frozen=True)
class Slice:
    dir: Path
    train: Path
    replay: Path
    labels: Path
    records: list[dict[str, Any]]  # the replayed lines, in order: {"text", "time"}
    keys: list[str]  # each replayed line's block id
    anomalous: set[str]  # labelled anomalous blocks among the replayed


@pytest.fixture(scope="module")
def hdfs_slice(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Slice:
    source = datasets_dir / "hdfs_sessions"
    key = re.compile(KEY)
    with gzip.open(source / "HDFS_sessions.log.gz", "rt", encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    blocks = [_key(key, line) for line in lines]
    first: dict[str, int] = {}
    for number, block in enumerate(blocks):
        first.setdefault(block, number)
    times = [
        round(datetime.strptime(line[:13], "%y%m%d %H%M%S").replace(tzinfo=UTC).timestamp() * 1000)
        for line in lines
    ]
    trained = {k for k, n in first.items() if n < TRAIN_BEFORE_LINE}
    replayed = {k for k, n in first.items() if TRAIN_BEFORE_LINE <= n < TRAIN_BEFORE_LINE + REPLAY_LINES}
    last = max(t for t, b in zip(times, blocks, strict=True) if b in replayed)
    shift = (int(time.time() * 1000) - ENDED_AGO_MS) // 60_000 * 60_000 - last
    d = tmp_path_factory.mktemp("hdfs_sessions")

    def write(path: Path, wanted: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
        rows = [
            ({"text": line, "time": t + shift}, b)
            for line, t, b in zip(lines, times, blocks, strict=True)
            if b in wanted
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r, _ in rows), encoding="utf-8")
        return [r for r, _ in rows], [b for _, b in rows]

    write(d / "train.jsonl", trained)
    records, keys = write(d / "replay.jsonl", replayed)
    with (source / "anomaly_label.csv").open(encoding="utf-8", newline="") as fh:
        anomalous = {row[0] for row in csv.reader(fh) if row[1:2] == ["Anomaly"]}
    return Slice(d, d / "train.jsonl", d / "replay.jsonl", source / "anomaly_label.csv",
                 records, keys, anomalous & replayed)  # fmt: skip


def _key(pattern: re.Pattern[str], line: str) -> str:
    found = pattern.search(line)
    assert found is not None, f"an HDFS line without a block id: {line!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def session_bundle(hdfs_slice: Slice, embedder_dir: Path) -> Path:
    out = hdfs_slice.dir / "bundle"
    result = cli(
        "train", "--input", str(hdfs_slice.train), "--text-field", "text", "--detector", "knn",
        "--embedder", str(embedder_dir), "--out", str(out),
        "--session-key-pattern", KEY, "--session-time-field", "time",
        "--session-gap-seconds", str(GAP_SECONDS), "--session-max-seconds", str(MAX_SECONDS),
        "--session-labels", str(hdfs_slice.labels),
    )  # fmt: skip
    assert result.returncode == 0, f"anomaly-agent train failed:\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout)["training"]["sessions"]
    assert summary["anomalous_keys"] > 0, "the labels left the anomalous blocks out of the session model"
    return out


@dataclass(frozen=True)
class Offline:
    sessions: list[dict[str, Any]]  # score --sessions: every session, in order of closing
    flagged: list[dict[str, Any]]  # those with is_anomaly
    lines: list[bool]  # score: is_anomaly per replayed line


@pytest.fixture(scope="module")
def offline(hdfs_slice: Slice, session_bundle: Path) -> Offline:
    scored = cli("score", "--bundle", str(session_bundle), "--input", str(hdfs_slice.replay), "--sessions")
    assert scored.returncode == 0, f"anomaly-agent score --sessions failed:\n{scored.stderr[-4000:]}"
    sessions = [json.loads(line) for line in scored.stdout.splitlines() if line.strip()]
    lines = cli("score", "--bundle", str(session_bundle), "--input", str(hdfs_slice.replay),
                "--text-field", "text")  # fmt: skip
    assert lines.returncode == 0, f"anomaly-agent score failed:\n{lines.stderr[-4000:]}"
    per_line = [bool(json.loads(line)["is_anomaly"]) for line in lines.stdout.splitlines() if line.strip()]
    assert len(per_line) == len(hdfs_slice.records)
    flagged = [s for s in sessions if s["is_anomaly"]]
    # The replay holds known-bad sessions, and the model flags them (and may flag a normal one).
    assert {s["session"] for s in flagged} & hdfs_slice.anomalous, "no labelled anomaly is flagged"
    # Some are decided at a step (an alert before the close), some only at the close; some close
    # in the stream (gap), some only at its end.
    assert any(s["decisive"] for s in flagged) and any(not s["decisive"] for s in flagged)
    assert {s["reason"] for s in sessions} == {"gap", "end_of_input"}
    return Offline(sessions, flagged, per_line)


# ----------------------------------------------------------------------------- the broker side


@dataclass(frozen=True)
class Replay:
    topic: str
    positions: list[tuple[int, int]]  # (partition, offset) of each replayed line


@pytest.fixture(scope="module")
def replay(kafka_bootstrap: str, kafka_admin: AdminClient, hdfs_slice: Slice) -> Iterator[Replay]:
    """The replay on one input topic, produced once: every test reads it with its own group, so
    the ids (which name the input topic, partition and offset) compare across tests."""
    topic = f"t-sessions-replay-{random.getrandbits(40):010x}"
    kafka_admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)])[topic].result(timeout=30)
    wait_for_topic(kafka_admin, topic, PARTITIONS)
    # The block id as the record key: all of a block on one partition, in order.
    records = [
        (block.encode(), json.dumps(r).encode(), None)
        for r, block in zip(hdfs_slice.records, hdfs_slice.keys, strict=True)
    ]
    placed = produce(
        kafka_bootstrap, topic, records, timestamps=[r["time"] for r in hdfs_slice.records], flush_s=60
    )
    assert len({p for p, _ in placed}) == PARTITIONS, "the blocks are spread over every partition"
    yield Replay(topic, placed)
    kafka_admin.delete_topics([topic], operation_timeout=30)


def agent_topics(make_topic: TopicFactory, make_group: GroupFactory) -> AgentTopics:
    """A test's own alert, dead-letter and changelog topics and group on the shared replay."""
    alerts = make_topic(1)
    make_topic(PARTITIONS, name=f"{alerts}.groups", config={"cleanup.policy": "compact"})
    return AgentTopics("", alerts, make_topic(1), make_group())


def env_for(
    bootstrap: str, replay: Replay, topics: AgentTopics, bundle: Path, name: str, **extra: str
) -> dict[str, str]:
    topics = AgentTopics(replay.topic, topics.alerts, topics.dead_letter, topics.group)
    settings = {
        "sessions__enabled": "true",
        "sessions__key_pattern": KEY,
        "alerts__group_by": "pattern",
        "batch__max_size": "8",
    } | extra
    return agent_env(bootstrap, topics, bundle, instance_id=name, **settings)


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` to its end (False while the
    group's coordinator is not there yet: a fresh group on a fresh broker)."""
    try:
        committed, ends = offsets(bootstrap, group, topic)
    except KafkaException:
        return False
    return committed == ends


def mid_stream(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has records of ``topic`` left to commit (asked right after a ``kill -9``:
    the killed member's transaction is still pending, so not the stable offsets, which wait for it)."""
    committed, ends = offsets(bootstrap, group, topic, stable=False)
    return any(committed.get(p, -1) < end for p, end in ends.items())


def documents(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"") for m in read_committed(bootstrap, topic, quiet_s=0.5)]


def counted(docs: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(sessions, lines) the alert topic accounts for: alerts, and the events summaries counted."""
    sessions = lines = 0
    for d in docs:
        n = d["group"]["suppressed"] if d["kind"] == "summary" else 1
        if d["session"] is not None:
            sessions += n
        else:
            lines += n
    return sessions, lines


def wait_published(
    bootstrap: str, topics: AgentTopics, replay: Replay, *, sessions: int, lines: int
) -> list[dict[str, Any]]:
    """Until the group has committed the whole replay and the alert topic accounts for
    ``sessions`` flagged sessions and ``lines`` anomalous lines (the sessions still open at the
    end of the input close on the wall clock once their partition is quiet); then a last look."""
    wait_until(
        lambda: caught_up(bootstrap, topics.group, replay.topic),
        timeout=DONE_TIMEOUT_S,
        interval=0.5,
        what=f"group {topics.group} to commit the whole replay",
    )
    deadline = time.monotonic() + DONE_TIMEOUT_S
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = documents(bootstrap, topics.alerts)
        got_sessions, got_lines = counted(docs)
        if got_sessions >= sessions and got_lines >= lines:
            break
        time.sleep(1.0)
    time.sleep(1.0)
    docs = documents(bootstrap, topics.alerts)
    assert counted(docs) == (sessions, lines), f"accounted for (sessions, lines) {counted(docs)}"
    assert len({d["id"] for d in docs}) == len(docs), "a record published twice"
    return docs


def outcome(docs: Sequence[dict[str, Any]]) -> list[Outcome]:
    """What a run published, without when and by whom: id, kind, source, session, counts, score."""
    out: list[Outcome] = []
    for d in docs:
        session = d["session"]
        out.append(
            (
                d["id"],
                d["kind"],
                d["source"]["partition"],
                d["source"]["offset"],
                None if session is None else session["key"],
                None if session is None else session["events"],
                None if d["group"] is None else d["group"]["suppressed"],
                round(d["score"], 6),
            )
        )
    return sorted(out)


def changelog_sessions(bootstrap: str, topics: AgentTopics) -> dict[bytes, bytes | None]:
    """The latest value of every session record of the state changelog (None: a tombstone)."""
    latest: dict[bytes, bytes | None] = {}
    for msg in read_committed(bootstrap, f"{topics.alerts}.groups", quiet_s=0.5):
        key = msg.key() or b""
        if key.startswith(b"{") and json.loads(key)["kind"] in ("session", "session_clock"):
            latest[key] = msg.value()
    return latest


def run_once(
    bootstrap: str, replay: Replay, topics: AgentTopics, bundle: Path, log: Path, offline: Offline,
    **extra: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """One uninterrupted agent over the replay; what it published."""
    agent = AgentProcess(env_for(bootstrap, replay, topics, bundle, "sessions-agent", **extra), log)
    try:
        enabled = extra.get("sessions__enabled", "true") == "true"
        sessions = len(offline.flagged) if enabled else 0
        docs = wait_published(bootstrap, topics, replay, sessions=sessions, lines=sum(offline.lines))
        if enabled:
            # Every session the offline run scored closed here too, all of them by their gap
            # (in the stream, or on the wall clock once their partition was quiet).
            wait_until(
                lambda: agent.metric(CLOSED_BY_GAP) >= len(offline.sessions),
                timeout=DONE_TIMEOUT_S,
                what="every session to close",
            )
            closed = {k: v for k, v in agent.metrics().items() if k.startswith(CLOSED) and v}
            assert closed == {CLOSED_BY_GAP: len(offline.sessions)}
        assert agent.terminate() == 0, agent.tail()
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    return docs


@dataclass(frozen=True)
class Baseline:
    topics: AgentTopics
    docs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def grouped_baseline(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    replay: Replay,
    session_bundle: Path,
    offline: Offline,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Baseline]:
    """One uninterrupted agent with the product's grouping (by pattern; sessions by signature)."""
    name = f"t-sessions-baseline-{random.getrandbits(40):010x}"
    made = [NewTopic(f"{name}-alerts", 1), NewTopic(f"{name}-dead", 1)]
    made.append(NewTopic(f"{name}-alerts.groups", PARTITIONS, config={"cleanup.policy": "compact"}))
    for future in kafka_admin.create_topics(made).values():
        future.result(timeout=30)
    for topic in made:
        wait_for_topic(kafka_admin, topic.topic, topic.num_partitions)
    topics = AgentTopics("", f"{name}-alerts", f"{name}-dead", f"{name}-group")
    log = tmp_path_factory.mktemp("baseline") / "agent.log"
    docs = run_once(kafka_bootstrap, replay, topics, session_bundle, log, offline)
    yield Baseline(topics, docs)
    kafka_admin.delete_topics([t.topic for t in made], operation_timeout=30)


# ----------------------------------------------------------------------------- the tests


def test_one_alert_per_event_gives_exactly_the_offline_flags(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    hdfs_slice: Slice,
    replay: Replay,
    session_bundle: Path,
    offline: Offline,
    tmp_path: Path,
) -> None:
    topics = agent_topics(make_topic, make_group)
    docs = run_once(kafka_bootstrap, replay, topics, session_bundle, tmp_path / "agent.log", offline,
                    alerts__group_by="event")  # fmt: skip
    assert {d["kind"] for d in docs} <= {"alert", "session"}

    # Sessions: every flagged session is one alert, with its id, key, first and last offset; a
    # decisive one at its decisive step (reason "open"), the others at their close.
    expected = expected_session_alerts(replay.topic, replay.positions, offline.flagged)
    got = {
        alert: {**fields, "score": None if fields["score"] is None else round(fields["score"], 6)}
        for alert, fields in published_session_alerts(docs).items()
    }
    assert {d["session"]["reason"] for d in docs if d["kind"] == "session"} <= {"open", "gap"}
    assert got == expected
    flagged = {row["session"] for row in offline.flagged}
    print(
        "sessions:",
        json.dumps(
            {
                "replayed_lines": len(replay.positions),
                "sessions": len(offline.sessions),
                "flagged": len(offline.flagged),
                "decisive": sum(row["decisive"] for row in offline.flagged),
                "flagged_labelled_anomalous": len(flagged & hdfs_slice.anomalous),
                "labelled_anomalous": len(hdfs_slice.anomalous),
            }
        ),
    )

    # Lines: exactly what ``anomaly-agent score`` flags, one alert each.
    lines = {alert_id(replay.topic, *replay.positions[i]) for i, bad in enumerate(offline.lines) if bad}
    assert {d["id"] for d in docs if d["kind"] == "alert"} == lines


def test_grouped_by_signature_the_alerted_keys_and_counts_are_the_offline_flags(
    kafka_bootstrap: str, grouped_baseline: Baseline, hdfs_slice: Slice, replay: Replay, offline: Offline
) -> None:
    docs = grouped_baseline.docs
    sessions = [d for d in docs if d["kind"] == "session"]
    summaries = [d for d in docs if d["kind"] == "summary" and d["session"] is not None]
    flagged = {(replay.positions[row["first_line"] - 1], row["session"]): row for row in offline.flagged}
    # Every session alert is a flagged session (its key and where it began), each alerted once.
    alerted = [((d["source"]["partition"], d["session"]["first"]["offset"]), d["session"]["key"])
               for d in sessions]  # fmt: skip
    assert len(set(alerted)) == len(alerted) and set(alerted) <= set(flagged)
    # One alert per signature, partition and cooldown: every (partition, signature) of a flagged
    # session alerted, the rest of its window is counted in a summary.
    signatures = {(row_pos[0], row["signature"]) for (row_pos, _), row in flagged.items()}
    assert {(d["source"]["partition"], d["session"]["signature"]) for d in sessions} == signatures
    assert {(d["source"]["partition"], d["session"]["signature"]) for d in summaries} <= signatures
    suppressed = sum(d["group"]["suppressed"] for d in summaries)
    assert len(sessions) + suppressed == len(flagged)
    assert suppressed > 0, "sessions failing alike were grouped"
    # The open sessions went through the state changelog, and every one was closed at the end.
    state = changelog_sessions(kafka_bootstrap, grouped_baseline.topics)
    opened = [k for k in state if json.loads(k)["kind"] == "session"]
    assert {json.loads(k)["session"] for k in opened} == set(hdfs_slice.keys)
    assert all(state[k] is None for k in opened), "a session left open in the changelog"


def test_kill_9_three_times_mid_stream_publishes_the_same(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    replay: Replay,
    session_bundle: Path,
    offline: Offline,
    grouped_baseline: Baseline,
    agent_processes: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """The restarted agent restores the open sessions, the partitions' session clocks and the
    grouping windows from the changelog; a batch in flight at the kill is aborted and redelivered
    and decided alike: no session alerted twice or lost, no count changed."""
    topics = agent_topics(make_topic, make_group)
    env = env_for(kafka_bootstrap, replay, topics, session_bundle, "sessions-crash")
    rng = random.Random(18)
    for life in range(3):
        agent = AgentProcess(env, tmp_path / f"agent-{life}.log")
        agent_processes.append(agent)
        wait_until(lambda a=agent: a.metric(COMMITTED) >= 1, timeout=120, what="the agent's first commit")
        time.sleep(rng.uniform(0.2, 1.5))
        agent.kill()
        assert mid_stream(kafka_bootstrap, topics.group, replay.topic), "killed after the stream"
    final = AgentProcess(env, tmp_path / "agent-final.log")
    agent_processes.append(final)
    docs = wait_published(kafka_bootstrap, topics, replay, sessions=len(offline.flagged),
                          lines=sum(offline.lines))  # fmt: skip
    assert final.terminate() == 0, final.tail()
    assert outcome(docs) == outcome(grouped_baseline.docs)


def test_a_member_joining_and_leaving_mid_stream_publishes_the_same(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    replay: Replay,
    session_bundle: Path,
    offline: Offline,
    grouped_baseline: Baseline,
    agent_processes: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """A second agent joins mid-stream (partitions move to it with their open sessions) and
    leaves (SIGTERM; they move back to the first, which carries them on): the sessions follow
    their partitions each time. A third agent, at the default batch size, takes over from the
    first (SIGTERM) and finishes the stream."""
    topics = agent_topics(make_topic, make_group)
    # The two agents at one record per transaction: the stream then lasts thousands of transaction
    # round trips (broker latency, not CPU), so the second agent joins while every partition still
    # has records left, however fast the machine scores (with 4 per batch a quick machine finished
    # a partition before the second agent had started). The rest is the third agent's, at full
    # speed: at one record per transaction the whole stream took two minutes of a loaded CI run.
    first = AgentProcess(env_for(kafka_bootstrap, replay, topics, session_bundle, "sessions-a",
                                 batch__max_size="1"), tmp_path / "a.log")  # fmt: skip
    agent_processes.append(first)
    wait_until(lambda: first.metric(COMMITTED) >= 5, timeout=120, what="the first agent's commits")
    second = AgentProcess(env_for(kafka_bootstrap, replay, topics, session_bundle, "sessions-b",
                                  batch__max_size="1"), tmp_path / "b.log")  # fmt: skip
    agent_processes.append(second)
    wait_until(lambda: second.metric(COMMITTED) >= 3, timeout=120, what="the second agent's commits")
    assert mid_stream(kafka_bootstrap, topics.group, replay.topic), "joined after the stream"
    assert second.terminate() == 0, second.tail()
    carried = first.metric(COMMITTED) + 3
    wait_until(lambda: first.metric(COMMITTED) >= carried, timeout=120, what="the first agent to carry on")
    assert first.terminate() == 0, first.tail()
    last = AgentProcess(env_for(kafka_bootstrap, replay, topics, session_bundle, "sessions-c"),
                        tmp_path / "c.log")  # fmt: skip
    agent_processes.append(last)
    docs = wait_published(kafka_bootstrap, topics, replay, sessions=len(offline.flagged),
                          lines=sum(offline.lines))  # fmt: skip
    assert last.terminate() == 0, last.tail()
    assert outcome(docs) == outcome(grouped_baseline.docs)
    restored = first.log().count("grouping state restored") + second.log().count("grouping state restored")
    assert restored >= 3, "partitions moved between the agents with their state"


def test_sessions_off_publishes_the_same_less_the_session_alerts(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    replay: Replay,
    session_bundle: Path,
    offline: Offline,
    grouped_baseline: Baseline,
    tmp_path: Path,
) -> None:
    """``[sessions] enabled = false`` with the same bundle: every line alert and summary of the
    sessions-on run, nothing of sessions, and no session state in the changelog."""
    topics = agent_topics(make_topic, make_group)
    docs = run_once(kafka_bootstrap, replay, topics, session_bundle, tmp_path / "agent.log", offline,
                    sessions__enabled="false")  # fmt: skip
    assert all(d["session"] is None for d in docs)
    lines = [d for d in grouped_baseline.docs if d["session"] is None]
    assert outcome(docs) == outcome(lines)
    assert changelog_sessions(kafka_bootstrap, topics) == {}
    assert Counter(d["kind"] for d in grouped_baseline.docs)["session"] > 0
