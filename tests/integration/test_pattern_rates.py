"""Pattern rates on the real broker: a replay into which a spike and a silence are injected
publishes exactly the expected rate alerts, and exactly the same whatever happens to the agent
(``kill -9`` three times mid-spike, a second member joining and leaving mid-stream);
``[rates] enabled = false`` publishes what the agent published before rates, nothing more.

The replay: 4.5 hours of event time (explicit Kafka timestamps, ending an hour and a half ago),
produced in about a second over two partitions:

- a heartbeat (one BGL line) once a minute on partition 0, which **stops for good** at minute 150
  (a cron job that died): steady, so a silence once 14 quiet minutes are improbable;
- a chatty pattern (another BGL line) at 3-7 a minute for 12 minutes of every 30, on both
  partitions (its 18-minute gaps make it not steady: no silence), which **surges** to 60 a minute
  for 5 minutes at minute 200 on partition 1: a spike, grouped one per cooldown with a summary;
- spam (certain anomalies for the BGL-trained bundle) about once every 5 minutes per partition:
  the novelty alerts and their summaries.

The rate knobs come from the agent's environment (``ANOMALY_AGENT_RATES__...``): an hour of
warm-up, ``min_count`` 5, steady within 30 minutes. What must be published is computed from the
records alone: the rate decisions by the agent's own rule (``RateTracker``, run plainly over the
records in offset order at each partition's running maximum timestamp), the novelty alerts by
``grouping_reference.expected`` over what ``anomaly-agent score`` flags. Rate documents are compared
whole (but ``detected_at`` and ``agent``), novelty documents by id, kind, source, pattern and
group counts (their scores are the model's floats).

Nothing is timed: every wait is for progress (offsets committed, records published), with
deadlines only a hang misses. Where a kill or a rebalance lands depends on the machine's speed
(the positions are printed); what is published must not.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    agent_env,
    bgl_lines,
    offline_anomalies,
    read_committed,
    wait_caught_up,
    wait_until,
)
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from grouping_reference import Published, expected, published
from kafka_fixtures import wait_for_topic

from agent.alerts.partition_rates import template_id, tracker
from agent.alerts.rates import RateDecision
from agent.config import RateSettings
from agent.model.bundle import load_bundle
from exporters.alerts import rate_alert_id, summary_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
PARTITIONS = 2
MINUTES = 270
STOP_AT = 150  # the heartbeat's last minute is 149, on partition 0
SURGE_AT, SURGE_MINUTES, SURGE_PER_MINUTE = 200, 5, 60  # the chatty pattern on partition 1
COOLDOWN_S = 600.0
RATES: dict[str, Any] = {"warmup_seconds": 3_600.0, "min_count": 5, "steady_within_seconds": 1_800.0}
# The two BGL lines (from the bundle's training lines: normal).
HEARTBEAT, CHATTY = "instruction cache parity error corrected", "generating core."
SPAM = (
    "WINNER!! You have been selected to receive a {a} pound prize. Call 0906{b} to claim, code {c}",
    "URGENT! Your mobile number {a} was awarded a {b} GBP bonus caller prize, call 09061{c} now",
)
# A hang misses these; a slow machine does not.
CATCH_UP_S = 300.0
PUBLISH_S = 120.0
# Where in the surge's records of partition 1 each of the three lives is killed.
KILL_AT = (0.05, 0.4, 0.75)


@dataclass(frozen=True)
class Row:
    partition: int
    offset: int
    timestamp_ms: int
    text: str
    prepared: str
    anomalous: bool


@dataclass(frozen=True)
class Expected:
    """A rate record the replay must publish: its kind, the decision behind it, its id and
    (partition, offset) of its source (spike: the crossing event; silence: the key's example) or,
    for the summary, the spiking buckets it counts."""

    kind: str
    decision: RateDecision
    id: str
    detail: tuple[int, int] | int


@dataclass(frozen=True)
class Replay:
    """The produced input topic, its records and what every run must publish."""

    topic: str
    rows: list[Row]
    novelty: list[Published]  # grouping's alerts and summaries of the anomalous (spam) events
    rates: list[Expected]  # spike, its summary, silence (their ids name ``topic``)
    surge_offsets: tuple[int, int]  # first and last offset of the surge on partition 1
    heartbeat: str
    chatty: str

    def rates_on(self, topic: str) -> list[Expected]:
        """The rate records the same rows publish from another input topic."""
        return expected_rates(topic, self.rows, rate_decisions(topic, self.rows))


# ----------------------------------------------------------------------------- the replay


def make_rows(datasets_dir: Path, prepare: Callable[[str], str], base_ms: int, seed: int) -> list[Row]:
    """The replay's records in production order (timestamps ascending per partition), not yet
    flagged (``anomalous`` False)."""
    rng = random.Random(seed)
    normal, _ = bgl_lines(datasets_dir)
    heartbeat = next(t for t in normal if HEARTBEAT in t)
    chatty = next(t for t in normal if CHATTY in t)
    stamped: list[tuple[int, int, str]] = []
    for minute in range(MINUTES):
        start = base_ms + minute * MINUTE_MS
        for partition in range(PARTITIONS):
            if partition == 0 and minute < STOP_AT:
                stamped.append((start + 7_000, partition, heartbeat))
            count = rng.randint(3, 7) if minute % 30 < 12 else 0
            if partition == 1 and SURGE_AT <= minute < SURGE_AT + SURGE_MINUTES:
                count = SURGE_PER_MINUTE
            stamped += [(start + rng.randrange(MINUTE_MS), partition, chatty) for _ in range(count)]
            if rng.random() < 0.2:
                text = rng.choice(SPAM).format(
                    a=rng.randint(100, 99_999), b=rng.randint(1_000, 999_999), c=rng.randint(10, 9_999)
                )
                stamped.append((start + rng.randrange(MINUTE_MS), partition, text))
    stamped.sort(key=lambda s: (s[0], s[1]))
    offsets = [0] * PARTITIONS
    rows = []
    for ts, partition, text in stamped:
        rows.append(Row(partition, offsets[partition], ts, text, prepare(text), False))
        offsets[partition] += 1
    return rows


def templates(rows: list[Row]) -> tuple[str, str]:
    """The prepared texts of the heartbeat and of the chatty pattern."""
    heartbeat = next(r.prepared for r in rows if HEARTBEAT in r.text)
    return heartbeat, next(r.prepared for r in rows if CHATTY in r.text)


def rate_decisions(topic: str, rows: list[Row]) -> list[tuple[RateDecision, Row]]:
    """The agent's rule run plainly: each partition's records in offset order, at the partition's
    running maximum timestamp; then the wall clock (the stream ended long ago) decides what is left."""
    trackers = {p: tracker(RateSettings(**RATES)) for p in range(PARTITIONS)}
    event_time: dict[int, int] = {}
    out: list[tuple[RateDecision, Row]] = []
    for row in rows:
        event_time[row.partition] = max(event_time.get(row.partition, -1), row.timestamp_ms)
        key = (topic, row.partition, template_id(row.prepared), ())
        out += [(d, row) for d in trackers[row.partition].observe(key, event_time[row.partition])]
    now_ms = int(time.time() * 1000)
    tail = [d for t in trackers.values() for d in t.advance(now_ms)]
    assert not tail, f"the replay must end with no steady key left to go silent: {tail}"
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expected_rates(topic: str, rows: list[Row], decisions: list[tuple[RateDecision, Row]]) -> list[Expected]:
    """The designed stream decides one silence (the heartbeat, partition 0, from minute 150) and
    spikes of the chatty pattern on partition 1 from minute 200, all within one cooldown: one
    spike alert, one summary counting the others, one silence."""
    base = rows[0].timestamp_ms - rows[0].timestamp_ms % HOUR_MS
    heartbeat, chatty = templates(rows)
    spikes = [(d, r) for d, r in decisions if d.kind == "spike"]
    silences = [(d, r) for d, r in decisions if d.kind == "silence"]
    assert [(d.key[1], d.key[2], d.bucket_start_ms) for d, _ in silences] == [
        (0, template_id(heartbeat), base + STOP_AT * MINUTE_MS)
    ], silences
    assert len(spikes) >= 2, spikes
    assert all(d.key[1] == 1 and d.key[2] == template_id(chatty) for d, _ in spikes), spikes
    first, crossing = spikes[0]
    assert first.bucket_start_ms == base + SURGE_AT * MINUTE_MS, "decided in the surge's first minute"
    assert spikes[-1][0].at_ms < first.at_ms + COOLDOWN_S * 1000, "every spike in one cooldown"
    silence, _ = silences[0]
    example = next(
        r
        for r in rows
        if r.partition == 0 and r.prepared == heartbeat and r.timestamp_ms >= base + 149 * MINUTE_MS
    )
    return [
        Expected("spike", first, rate_alert_id("spike", first.basis()), (1, crossing.offset)),
        Expected(
            "summary", first, summary_id(topic, 1, f"spike:{first.key[2]}", first.at_ms), len(spikes) - 1
        ),
        Expected("silence", silence, rate_alert_id("silence", silence.basis()), (0, example.offset)),
    ]


def produce_rows(bootstrap: str, topic: str, rows: list[Row]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for row in rows:
        value = json.dumps({"text": row.text}).encode()
        producer.produce(topic, value, partition=row.partition, timestamp=row.timestamp_ms)
        producer.poll(0)
    assert producer.flush(60) == 0, "the replay was not delivered within 60 s"


def create_topic(admin: AdminClient, name: str, partitions: int, config: dict[str, str] | None = None) -> str:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, config=config or {})])
    futures[name].result(timeout=30)
    wait_for_topic(admin, name, partitions)
    return name


def unique(prefix: str) -> str:
    return f"{prefix}-rates-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def replay(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replay]:
    """The replay, produced once into an input topic every test reads (each with its own group and
    alert topic): the ids of rate alerts name the input topic, so every run must publish the same."""
    # Old timestamps would fall to the broker's time-based retention: this topic keeps them.
    topic = create_topic(kafka_admin, unique("in"), PARTITIONS, {"retention.ms": "-1"})
    created = [topic]
    try:
        prepare = load_bundle(agent_bundle).text_prep.prepare
        base = (int(time.time() * 1000) // HOUR_MS - 6) * HOUR_MS
        rows = make_rows(datasets_dir, prepare, base, seed=17)
        work = tmp_path_factory.mktemp("rates")
        flags = offline_anomalies(agent_bundle, [{"text": r.text} for r in rows], work)
        rows = [
            Row(r.partition, r.offset, r.timestamp_ms, r.text, r.prepared, flag)
            for r, flag in zip(rows, flags, strict=True)
        ]
        heartbeat, chatty = templates(rows)
        assert not any(r.anomalous for r in rows if r.prepared in (heartbeat, chatty)), "BGL lines are normal"
        assert any(r.anomalous for r in rows), "spam is anomalous: there are novelty alerts to compare"
        novelty = expected(
            [(r.partition, r.timestamp_ms, r.prepared if r.anomalous else None, r.offset) for r in rows],
            int(COOLDOWN_S * 1000),
        )
        surge = [
            r.offset
            for r in rows
            if r.partition == 1
            and r.prepared == chatty
            and base + SURGE_AT * MINUTE_MS <= r.timestamp_ms < base + (SURGE_AT + SURGE_MINUTES) * MINUTE_MS
        ]
        produce_rows(kafka_bootstrap, topic, rows)
        yield Replay(
            topic,
            rows,
            novelty,
            expected_rates(topic, rows, rate_decisions(topic, rows)),
            (surge[0], surge[-1]),
            heartbeat,
            chatty,
        )
    finally:
        kafka_admin.delete_topics(created, operation_timeout=30)


# ----------------------------------------------------------------------------- running the agent


@dataclass
class Run:
    """One run over the replay: its own group, alert topic (and so changelog) and dead letters."""

    topics: AgentTopics
    env: dict[str, str]
    work: Path

    def agent(self, name: str, instance: str = "rates-agent") -> AgentProcess:
        return AgentProcess(self.env | {"ANOMALY_AGENT_INSTANCE_ID": instance}, self.work / f"{name}.log")


def make_run(
    bootstrap: str,
    admin: AdminClient,
    bundle: Path,
    topic: str,
    work: Path,
    made: list[str],
    **extra: str,
) -> Run:
    """A run on the input ``topic`` with the product's grouping (one alert per key and cooldown),
    the short warm-up and ``extra`` settings (``batch__max_size="4"``); its topics are added to
    ``made``."""
    alerts = create_topic(admin, unique("alerts"), 1)
    dead = create_topic(admin, unique("dead"), 1)
    made.extend([alerts, dead, f"{alerts}.groups"])
    topics = AgentTopics(topic, alerts, dead, unique("g"))
    settings = {
        "batch__max_size": "8",
        "alerts__group_by": "pattern",
        "alerts__cooldown_seconds": str(COOLDOWN_S),
        "rates__enabled": "true",  # agent_env turns rates off for the per-event tests
        **{f"rates__{k}": str(v) for k, v in RATES.items()},
        **extra,
    }
    return Run(topics, agent_env(bootstrap, topics, bundle, instance_id="rates-agent", **settings), work)


@pytest.fixture
def new_run(
    kafka_bootstrap: str, kafka_admin: AdminClient, agent_bundle: Path, replay: Replay, tmp_path: Path
) -> Iterator[Callable[..., Run]]:
    made: list[str] = []

    def make(topic: str | None = None, **extra: str) -> Run:
        """A run on ``topic`` (default: the replay's)."""
        topic = topic or replay.topic
        return make_run(kafka_bootstrap, kafka_admin, agent_bundle, topic, tmp_path, made, **extra)

    yield make
    if made:
        kafka_admin.delete_topics(made, operation_timeout=30)


def documents(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"") for m in read_committed(bootstrap, topic, quiet_s=0.5)]


def finish(bootstrap: str, run: Run, agents: list[AgentProcess], want: int) -> list[dict[str, Any]]:
    """Wait until the group committed the whole replay and ``want`` records are published (the
    last novelty windows close on the wall clock once the partitions are quiet), stop the agents
    (exit 0) and return the published documents."""
    for agent in agents:
        agent.wait_ready()
    _retrying(lambda: wait_caught_up(bootstrap, run.topics.group, run.topics.input, timeout=CATCH_UP_S))
    deadline = time.monotonic() + PUBLISH_S
    docs = documents(bootstrap, run.topics.alerts)
    while len(docs) < want and time.monotonic() < deadline:
        time.sleep(1.0)
        docs = documents(bootstrap, run.topics.alerts)
    for agent in agents:
        if agent.proc.poll() is None:
            assert agent.terminate() == 0, agent.tail()
    docs = documents(bootstrap, run.topics.alerts)
    assert len({d["id"] for d in docs}) == len(docs), "a record published twice"
    return docs


def rate_shape(doc: dict[str, Any]) -> dict[str, Any]:
    """A rate record (spike, silence, or a summary of either) but what depends on the wall clock
    or on which agent published it."""
    return {k: v for k, v in doc.items() if k not in ("detected_at", "agent")}


def assigned(agent: AgentProcess) -> bool:
    """Whether ``agent`` was given a partition (and restored its state)."""
    return "grouping state restored" in agent.log()


def split(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rate records sorted by id, novelty records sorted by id)."""
    rates = sorted((d for d in docs if d["rate"] is not None), key=lambda d: str(d["id"]))
    novelty = sorted((d for d in docs if d["rate"] is None), key=lambda d: str(d["id"]))
    return rates, novelty


def _retrying(call: Callable[[], T]) -> T:
    """``call()``, again while the broker answers a retriable error (a group coordinator still
    loading on a fresh broker answers NOT_COORDINATOR)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_COORDINATOR:
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed_offset(consumer: Consumer, topic: str, partition: int) -> int:
    tps = _retrying(lambda: consumer.committed([TopicPartition(topic, partition)], timeout=10))
    return int(tps[0].offset)


def wait_offset(consumer: Consumer, topic: str, partition: int, target: int, agent: AgentProcess) -> int:
    """Until the group committed ``partition`` beyond ``target`` (a deadline only a hang misses)."""
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        offset = committed_offset(consumer, topic, partition)
        if offset > target:
            return offset
        assert agent.proc.poll() is None, f"the agent exited:\n{agent.tail()}"
        time.sleep(0.01)
    raise AssertionError(f"partition {partition} not committed beyond {target} within {CATCH_UP_S} s")


@pytest.fixture(scope="module")
def uninterrupted(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    agent_bundle: Path,
    replay: Replay,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[dict[str, Any]]]:
    """What one agent publishes over the whole replay, uninterrupted (the runs below must match it)."""
    made: list[str] = []
    work = tmp_path_factory.mktemp("uninterrupted")
    run = make_run(kafka_bootstrap, kafka_admin, agent_bundle, replay.topic, work, made)
    agent = run.agent("agent")
    try:
        yield finish(kafka_bootstrap, run, [agent], len(replay.novelty) + len(replay.rates))
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        kafka_admin.delete_topics(made, operation_timeout=30)


# ----------------------------------------------------------------------------- the tests


def check(docs: list[dict[str, Any]], replay: Replay, want: list[Expected]) -> None:
    """``docs`` are exactly what the replay must publish: grouping's novelty alerts and summaries,
    and the rate records of ``want`` (a spike alert, its summary, a silence), field by field."""
    rates, novelty = split(docs)
    assert published(novelty) == replay.novelty, "the novelty alerts are grouping's, as without rates"
    by_kind = {d["kind"]: d for d in rates}
    assert sorted(d["kind"] for d in rates) == ["silence", "spike", "summary"], [d["kind"] for d in rates]
    for expected_record in want:
        kind, decision, detail = expected_record.kind, expected_record.decision, expected_record.detail
        doc = by_kind[kind]
        assert doc["id"] == expected_record.id, kind
        assert doc["detector"] == "rates" and doc["schema_version"] == 3
        rate = doc["rate"]
        assert rate["kind"] == decision.kind
        if kind == "summary":
            assert doc["group"]["suppressed"] == detail, "the spiking buckets after the first are counted"
            assert doc["pattern"]["template"] == replay.chatty
            continue
        assert (doc["source"]["partition"], doc["source"]["offset"]) == detail, "crossing event / example"
        assert doc["pattern"]["template"] == (replay.chatty if kind == "spike" else replay.heartbeat)
        assert rate["bucket_start"] == _iso(decision.bucket_start_ms)
        assert (rate["observed"], rate["threshold"], rate["buckets"]) == (
            decision.observed,
            decision.threshold,
            decision.buckets,
        )
        assert rate["expected"] == pytest.approx(decision.expected)
        assert rate["score"] == pytest.approx(decision.score)
    assert by_kind["spike"]["group"]["suppressed"] == 0 and by_kind["silence"]["rate"]["observed"] == 0


def same_rates(
    docs: list[dict[str, Any]], reference: list[dict[str, Any]], topic: str, ref_topic: str
) -> None:
    """The rate records of ``docs`` (read from input ``topic``) are those of ``reference`` (from
    ``ref_topic``) in every field but the wall clock's, the publishing agent's and, when the topics
    differ, the topic and the id (which names it)."""

    def canonical(records: list[dict[str, Any]], name: str) -> list[str]:
        shapes = []
        for record in records:
            shape = rate_shape(record)
            if topic != ref_topic:
                shape.pop("id")
            shapes.append(json.dumps(shape, sort_keys=True).replace(json.dumps(name), '"<input>"'))
        return sorted(shapes)

    got, want = canonical(split(docs)[0], topic), canonical(split(reference)[0], ref_topic)
    assert got == want, "\n".join(f"{a}\n{b}" for a, b in zip(got, want, strict=False) if a != b)


def test_a_spike_and_a_silence_in_a_replay_are_exactly_the_expected_rate_alerts(
    replay: Replay, uninterrupted: list[dict[str, Any]]
) -> None:
    check(uninterrupted, replay, replay.rates)


def test_kill_9_three_times_mid_spike_publishes_the_same(
    kafka_bootstrap: str, replay: Replay, uninterrupted: list[dict[str, Any]], new_run: Callable[..., Run]
) -> None:
    """Each life is killed once the group committed a given share of the surge's records on
    partition 1 (after the spike alert in its first minute, mid-cooldown, near its end, on this
    machine: the positions are printed); the restarted agent restores rate keys, windows and event
    time from the changelog. The output is the uninterrupted run's, ids included."""
    run = new_run(batch__max_size="4")
    lo, hi = replay.surge_offsets
    watcher = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": run.topics.group, "enable.auto.commit": False}
    )
    agents: list[AgentProcess] = []
    killed_at = []
    try:
        for life, share in enumerate(KILL_AT):
            agent = run.agent(f"life-{life}")
            agents.append(agent)
            agent.wait_ready()
            killed_at.append(wait_offset(watcher, run.topics.input, 1, lo + round(share * (hi - lo)), agent))
            agent.kill()
        print("rates kill -9: partition 1 committed at the kills", killed_at, "surge", (lo, hi))
        final = run.agent("final")
        agents.append(final)
        docs = finish(kafka_bootstrap, run, [final], len(uninterrupted))
    finally:
        watcher.close()
        for agent in agents:
            if agent.proc.poll() is None:
                agent.kill()
    check(docs, replay, replay.rates)
    same_rates(docs, uninterrupted, replay.topic, replay.topic)
    assert sorted(d["id"] for d in docs) == sorted(d["id"] for d in uninterrupted)


def test_a_member_joining_and_leaving_mid_stream_publishes_the_same(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    replay: Replay,
    uninterrupted: list[dict[str, Any]],
    new_run: Callable[..., Run],
) -> None:
    """Two agents share the group before the replay is produced (into a topic of this test's: one
    partition each); the second leaves (SIGTERM) once partition 1 is a third committed, so its
    partition moves mid-stream to the first (which commits more of it), and joins again: the
    partitions' rate keys, windows and event time follow them each time. The rate ids name the
    input topic, so they are this topic's expected ones; every other field is the uninterrupted
    run's."""
    topic = create_topic(kafka_admin, unique("in"), PARTITIONS, {"retention.ms": "-1"})
    try:
        run = new_run(topic, batch__max_size="1")
        watcher = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": run.topics.group, "enable.auto.commit": False}
        )
        last = max(r.offset for r in replay.rows if r.partition == 1)
        first, second = run.agent("a", "rates-a"), run.agent("b-0", "rates-b")
        agents = [first, second]
        try:
            first.wait_ready()
            second.wait_ready()
            for agent in agents:  # both own a partition: the group is settled before the replay
                wait_until(partial(assigned, agent), timeout=90, what="an assignment")
            produce_rows(kafka_bootstrap, topic, replay.rows)
            left_at = wait_offset(watcher, topic, 1, last // 3, first)
            assert second.terminate() == 0, second.tail()
            # The first agent carries partition 1 on from the second's state before it joins again.
            carried = wait_offset(watcher, topic, 1, min(left_at + 20, last), first)
            again = run.agent("b-1", "rates-b")
            agents.append(again)
            again.wait_ready()
            joined_at = committed_offset(watcher, topic, 1)
            print(
                "rates rebalance: partition 1 committed at the leave",
                left_at,
                "after the first carried it on",
                carried,
                "and the join",
                joined_at,
                "of",
                last + 1,
            )
            docs = finish(kafka_bootstrap, run, [first, again], len(uninterrupted))
        finally:
            watcher.close()
            for agent in agents:
                if agent.proc.poll() is None:
                    agent.kill()
    finally:
        kafka_admin.delete_topics([topic], operation_timeout=30)
    restored = sum(agent.log().count("grouping state restored") for agent in agents)
    assert restored >= 3, "partitions moved between the agents with their state"
    check(docs, replay, replay.rates_on(topic))
    same_rates(docs, uninterrupted, topic, replay.topic)


def test_rates_off_publishes_the_novelty_alerts_only_and_keeps_no_rate_state(
    kafka_bootstrap: str, replay: Replay, uninterrupted: list[dict[str, Any]], new_run: Callable[..., Run]
) -> None:
    """``[rates] enabled = false``: the output of the agent before rates — the novelty alerts and
    summaries, the same as with rates on, ids included — and no rate key in the state changelog."""
    run = new_run(rates__enabled="false")
    agent = run.agent("off")
    try:
        docs = finish(kafka_bootstrap, run, [agent], len(replay.novelty))
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    rates, novelty = split(docs)
    assert rates == [], "no spike, silence or summary of either"
    assert published(novelty) == replay.novelty
    with_rates = split(uninterrupted)[1]
    assert [d["id"] for d in novelty] == [d["id"] for d in with_rates]
    assert published(novelty) == published(with_rates)
    changelog = read_committed(kafka_bootstrap, f"{run.topics.alerts}.groups", quiet_s=0.5)
    kinds = {json.loads(m.key() or b"{}").get("kind") for m in changelog if (m.key() or b"")[:1] == b"{"}
    assert "rate" not in kinds, "no rate key in the state changelog"
    assert any((m.key() or b"")[:1] == b"[" for m in changelog), "grouping state is there"
