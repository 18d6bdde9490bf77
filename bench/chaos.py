#!/usr/bin/env python3
"""Chaos suite: the agent against a real broker that is restarted, agents that are killed and
rebalanced, hostile records and a long soak — each scenario with figures, JSON out.

Everything runs on 127.0.0.1: one broker of this run's own (``deploy/local/kafka.sh`` on a fixed
port and state dir, so that a restarted broker is the same broker), ``anomaly-agent run``
processes (exactly-once, static membership by their explicit ``instance_id``, the product's
default session timeout), a bundle trained like the test suite's (BGL normal lines) and event
streams of held-out BGL lines, BGL alert lines and SMS texts with a malformed record every 40th.
Expected alerts come from ``anomaly-agent score`` on the same events, so *lost* and *duplicated*
are counted against the offline tool, by source offset, on the alert topic read as subscribers
read it (``read_committed``); dead letters likewise.

Scenarios (``--scenarios``, default all of them; sizes from ``--small`` or ``--full``):

``broker_restart``
    The broker's JVM is ``kill -9``'d mid-stream and restarted on the same port and data dir.
    ``recovery_s``: from the restarted broker accepting connections (``kafka.sh start`` returned)
    to the agent's next committed transaction.
``agent_kill``
    The agent is ``kill -9``'d at random moments and restarted at once (same ``instance_id``).
    ``recovery_s``: from the kill to the moment every input partition committed again (the
    stream keeps every partition busy), start-up of the new process included; a commit of the
    dead agent that lands within ``SETTLE_S`` of its death does not count.
``rebalance``
    Two agents share the input; one of them is stopped (SIGTERM, every tenth time SIGKILL) and
    restarted. ``recovery_s`` as for ``agent_kill``; ``sigterm_exit_s``: SIGTERM to exit.
``hostile``
    Hostile records of every kind in tests/hostile_records.py, mixed with good events, as a
    backlog on five partitions (header names that are not UTF-8 on their own partition, written
    by the raw librdkafka producer). ``accounted``: records dead-lettered with their documented
    reason or scored; ``max_stall_s``: the longest time records were pending while no partition's
    committed offset moved (the loop stuck), from the agent's first commit on;
    ``max_partition_wait_s``: the same per partition (in a backlog it also counts a partition's
    wait while records prefetched from the others are worked off); ``alone``: each kind alone on
    an idle agent's partition, seconds from producing it (and a good event behind it) to both
    committed.
``backlog``
    A backlog consumed at full speed (large batches of mixed lengths); RSS every 2 s against the
    events processed: ``rss_mib_per_1000_events_second_half`` and ``rss_growth_second_half``.
``soak``
    A steady stream for ``--soak-minutes``; RSS sampled every 5 s. ``rss_growth_second_half``:
    (RSS at the end − RSS at half time) / RSS at half time.

Each scenario reports lost, duplicated, dead-lettered and stalled figures, recovery p50/max, the
agents' exit codes and the machine's load average before and after. ``--small`` is the version
that CI runs inside the test suite (tests/integration/test_chaos.py): one broker restart, three
agent kills, one rebalance, 1,000 hostile records, a 30-second soak (what CI can afford: it checks
that a steady stream loses and duplicates nothing; the RSS trend needs the full run's 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))

from agent_helpers import (  # noqa: E402  (tests/ is the home of the shared Kafka test helpers)
    AgentProcess,
    AgentTopics,
    Record,
    StreamProducer,
    agent_env,
    alert_sources,
    bgl_lines,
    cli,
    json_records,
    make_events,
    offline_anomalies,
    read_committed,
    wait_until,
)
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402
from hostile_records import (  # noqa: E402
    ANY_REASON,
    INPUT_TOPIC_MAX_MESSAGE_BYTES,
    KINDS,
    MAX_BYTES,
    Hostile,
    mixed,
)
from hostile_records import hostile as hostile_record  # noqa: E402
from raw_producer import produce_raw  # noqa: E402

KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"
DEFAULT_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
TRAIN_NORMAL_LINES = 500
PARTITIONS = 4
RATE = 20.0  # events/s: well below what one agent scores, so lag measures faults, not capacity
COMMITTED = 'anomaly_agent_transactions_total{result="committed"}'
# Stream generated per fault round: enough for a recovery as slow as the old code's (a broker
# restart hung 150 s+; a killed member's partitions waited ~48 s for its session to expire). The
# stream is stopped once the rounds are done, and only what was produced is judged.
STREAM_PER_BROKER_ROUND_S = 200
STREAM_PER_MEMBER_ROUND_S = 60
# After a member died: a commit it sent before dying may still land; samples this long after its
# death are the baseline that the next commit of every partition must move beyond.
SETTLE_S = 0.5

SIZES: dict[str, dict[str, int]] = {
    "small": {
        "broker_restart": 1,
        "agent_kill": 3,
        "rebalance": 1,
        "hostile": 1_000,
        "backlog": 2_000,
        "soak_seconds": 30,
    },
    "full": {
        "broker_restart": 5,
        "agent_kill": 20,
        "rebalance": 10,
        "hostile": 10_000,
        "backlog": 30_000,
        "soak_seconds": 600,
    },
}


# --- the broker ----------------------------------------------------------------------------------


class Broker:
    """This run's broker: restarted on the same port and data dir, so clients see the same broker."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _kafka_sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_PORT", "ANOMALY_AGENT_STATE_DIR")}
        return subprocess.run(
            ["bash", str(KAFKA_SH), *args, "--dir", str(self.state)],
            env=env | {"COLUMNS": "4096"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def start(self) -> None:
        started = self._kafka_sh("start", "--port", str(self.port), "--owner-pid", str(os.getpid()))
        if started.returncode != 0:
            raise SystemExit(f"chaos: kafka.sh start failed:\n{started.stderr}")

    def kill9(self) -> None:
        pid = int((self.state / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)

    def stop(self) -> None:
        self._kafka_sh("stop")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- observing the group -------------------------------------------------------------------------


class CommitWatcher:
    """Samples the group's committed offsets and the partitions' end offsets every ``interval_s``
    (a consumer with the group's id that never joins it)."""

    def __init__(
        self, bootstrap: str, group: str, topic: str, partitions: int, interval_s: float = 0.25
    ) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._interval = interval_s
        self.samples: list[tuple[float, dict[int, int], dict[int, int]]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                committed = {tp.partition: tp.offset for tp in self._consumer.committed(self._tps, timeout=2)}
                ends = {
                    tp.partition: self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)[1]
                    for tp in self._tps
                }
            except KafkaException:
                continue  # the broker is down: no sample
            self.samples.append((time.monotonic(), committed, ends))

    def latest(self) -> dict[int, int]:
        return dict(self.samples[-1][1]) if self.samples else {}

    def all_advanced_after(self, settled: float) -> float | None:
        """The first sample time by which every partition's committed offset moved beyond its
        value in the first sample taken at or after ``settled`` (None: not yet). Callers pass a
        moment after the old member is gone, so that its last in-flight commit is not counted."""
        later = [s for s in self.samples if s[0] >= settled]
        if not later:
            return None
        base = later[0][1]
        for t, committed, _ in later[1:]:
            if all(committed.get(p, -1) > base.get(p, -1) for p in range(len(self._tps))):
                return t
        return None

    def max_stall_s(self, after: float = 0.0) -> float:
        """Longest time any partition had records pending (committed < end) without moving,
        counted from ``after`` (e.g. the agent's first commit: start-up is not a stall)."""
        worst = 0.0
        since: dict[int, float] = {}
        last: dict[int, int] = {}
        for t, committed, ends in self.samples:
            if t < after:
                continue
            for p, offset in committed.items():
                pending = max(offset, 0) < ends.get(p, 0)
                if not pending or last.get(p) != offset:
                    since[p] = t
                last[p] = offset
                worst = max(worst, t - since.get(p, t))
        return round(worst, 2)

    def max_group_stall_s(self, after: float = 0.0) -> float:
        """Longest time records were pending somewhere while no partition's committed offset moved
        at all: the loop itself stuck. (``max_stall_s`` per partition also counts the time a
        partition waits in a backlog while the records prefetched from others are worked off.)"""
        worst, since, last = 0.0, None, None
        for t, committed, ends in self.samples:
            if t < after:
                continue
            pending = any(max(o, 0) < ends.get(p, 0) for p, o in committed.items())
            if not pending or committed != last or since is None:
                since = t
            last = committed
            worst = max(worst, t - since)
        return round(worst, 2)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def wait_drained(bootstrap: str, watcher: CommitWatcher, *, timeout: float) -> None:
    def drained() -> bool:
        if not watcher.samples:
            return False
        _, committed, ends = watcher.samples[-1]
        return all(committed.get(p, -1) >= end for p, end in ends.items())

    wait_until(drained, timeout=timeout, interval=0.5, what="the group to commit every record")


# --- one stream of events, and the verdict on what the agents made of it -------------------------


@dataclass
class Stream:
    """Events with a malformed record every 40th, what the offline scorer expects of them, and
    where each record landed."""

    records: list[Record]
    alert_at: set[int]
    poison_at: set[int]
    positions: list[tuple[int, int]] = field(default_factory=list)


def build_stream(datasets: Path, bundle: Path, work: Path, events: int, seed: int) -> Stream:
    """``events`` events in chunks of at most 1,000 (drawn without replacement within a chunk, so
    long streams repeat lines, as real logs do)."""
    generated: list[dict[str, Any]] = []
    while len(generated) < events:
        size = min(1_000, events - len(generated))
        foreign, alerts = max(1, size // 8), max(1, size // 12)
        chunk = make_events(
            datasets,
            normal=max(1, size - foreign - alerts),
            bgl_alerts=alerts,
            foreign=foreign,
            seed=seed + len(generated),
        )
        generated += [event | {"seq": len(generated) + i} for i, event in enumerate(chunk)]
    expected = offline_anomalies(bundle, generated, work)
    records: list[Record] = []
    alert_at: set[int] = set()
    poison_at: set[int] = set()
    for record, flagged in zip(json_records(generated), expected, strict=True):
        if len(records) % 40 == 20:
            poison_at.add(len(records))
            records.append((f"poison-{len(records)}".encode(), b"{broken json", None))
        if flagged:
            alert_at.add(len(records))
        records.append(record)
    return Stream(records, alert_at, poison_at)


def verdict(bootstrap: str, topics: AgentTopics, stream: Stream) -> dict[str, Any]:
    """Lost and duplicated alerts and dead letters, by source offset, read as subscribers read."""
    produced = len(stream.positions)
    stream = Stream(
        stream.records[:produced],
        {i for i in stream.alert_at if i < produced},
        {i for i in stream.poison_at if i < produced},
        stream.positions,
    )
    record_at = {position: i for i, position in enumerate(stream.positions)}
    alerts = Counter(
        record_at[s] for s in alert_sources(read_committed(bootstrap, topics.alerts, timeout=120))
    )
    dead = Counter(
        record_at[(int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))]
        for h in (dict(m.headers() or []) for m in read_committed(bootstrap, topics.dead_letter, timeout=120))
    )
    return {
        "events": len(stream.records),
        "expected_alerts": len(stream.alert_at),
        "alerts": sum(alerts.values()),
        "lost": len(stream.alert_at - set(alerts)),
        "unexpected": len(set(alerts) - stream.alert_at),
        "duplicated": sum(n - 1 for n in alerts.values() if n > 1),
        "dead_letters_expected": len(stream.poison_at),
        "dead_lettered": sum(dead.values()),
        "dead_letters_lost": len(stream.poison_at - set(dead)),
        "dead_letters_duplicated": sum(n - 1 for n in dead.values() if n > 1),
    }


RECOVERY_TIMEOUT_S = 180.0


def _waited(predicate: Callable[[], float | bool | None], since: float) -> float | None:
    """Seconds from ``since`` until ``predicate`` holds (a float it returns is the moment it held),
    or None when it did not within ``RECOVERY_TIMEOUT_S``: a hang, reported rather than raised, so
    the run goes on and says so."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        held = predicate()
        if held:
            moment = held if isinstance(held, float) else time.monotonic()
            return moment - since
        time.sleep(0.05)
    return None


def _summary(values: list[float | None]) -> dict[str, float | int | None]:
    done = [v for v in values if v is not None]
    return {
        "p50": round(statistics.median(done), 2) if done else None,
        "max": round(max(done), 2) if done else None,
        "timeouts": len(values) - len(done),
        "timeout_s": RECOVERY_TIMEOUT_S,
    }


def _rounded(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 2) for v in values]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the suite -----------------------------------------------------------------------------------


class Suite:
    def __init__(self, work: Path, datasets: Path, seed: int) -> None:
        self.work = work
        self.datasets = datasets
        self.rng = random.Random(seed)
        self.seed = seed
        self.broker = Broker(work / "kafka")
        self.bundle = work / "bundle"
        self._topic_no = 0
        self.agents: list[AgentProcess] = []

    def setup(self) -> None:
        self.broker.start()
        normal, _ = bgl_lines(self.datasets)
        train = self.work / "train.jsonl"
        train.write_text("".join(json.dumps({"text": t}) + "\n" for t in normal[:TRAIN_NORMAL_LINES]))
        from training.export import cached_export

        result = cli(
            "train", "--input", str(train), "--text-field", "text", "--detector", "knn",
            "--embedder", str(cached_export()), "--out", str(self.bundle),
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"chaos: anomaly-agent train failed:\n{result.stderr}")

    def topics(
        self, name: str, partitions: int = PARTITIONS, input_config: dict[str, str] | None = None
    ) -> AgentTopics:
        self._topic_no += 1
        base = f"chaos-{name}-{self._topic_no}-{self.rng.randrange(16**6):06x}"  # unique in a kept state dir
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})
        new = [
            NewTopic(f"{base}-in", num_partitions=partitions, config=input_config or {}),
            NewTopic(f"{base}-alerts", num_partitions=1),
            NewTopic(f"{base}-dead", num_partitions=1),
        ]
        for future in admin.create_topics(new, operation_timeout=30).values():
            future.result(timeout=60)
        return AgentTopics(f"{base}-in", f"{base}-alerts", f"{base}-dead", f"{base}-group")

    def agent(self, topics: AgentTopics, instance_id: str, log_name: str) -> AgentProcess:
        env = agent_env(
            self.broker.bootstrap,
            topics,
            self.bundle,
            instance_id=instance_id,
            # The product's defaults, not the test suite's shortcut (6 s).
            kafka__session_timeout_ms="45000",
            lifecycle__broker_unavailable_exit_seconds="0",
            lifecycle__shutdown_grace_seconds="20",
            events__max_bytes=str(MAX_BYTES),
        )
        agent = AgentProcess(env, self.work / f"{log_name}.log")
        self.agents.append(agent)
        return agent

    def kill_leftovers(self) -> None:
        """Agents still running when the suite ends (a scenario that failed half-way)."""
        for agent in self.agents:
            if agent.proc.poll() is None:
                agent.kill()

    @contextmanager
    def streaming(
        self, name: str, seconds: float, partitions: int = PARTITIONS
    ) -> Iterator[tuple[AgentTopics, Stream, StreamProducer, CommitWatcher]]:
        topics = self.topics(name, partitions)
        stream = build_stream(
            self.datasets, self.bundle, self.work, int(seconds * RATE), self.rng.randrange(1 << 30)
        )
        watcher = CommitWatcher(self.broker.bootstrap, topics.group, topics.input, partitions)
        producer = StreamProducer(self.broker.bootstrap, topics.input, stream.records, rate=RATE)
        try:
            yield topics, stream, producer, watcher
        finally:
            watcher.close()

    # ------------------------------------------------------------------ scenarios

    def broker_restart(self, rounds: int) -> dict[str, Any]:
        load = _load()
        recoveries: list[float | None] = []
        with self.streaming("broker", seconds=30 + rounds * STREAM_PER_BROKER_ROUND_S) as (
            topics,
            stream,
            producer,
            watcher,
        ):
            agent = self.agent(topics, "chaos-broker", "broker-agent")
            agent.wait_ready()
            time.sleep(5)
            for _ in range(rounds):
                self.broker.kill9()
                time.sleep(2)
                self.broker.start()
                up = time.monotonic()
                base = agent.metric(COMMITTED)
                recoveries.append(_waited(lambda b=base: agent.metric(COMMITTED) > b, up))
                time.sleep(self.rng.uniform(5, 10))
            producer.stop()
            stream.positions = producer.join(timeout=300)
            wait_drained(self.broker.bootstrap, watcher, timeout=300)
            exit_code = agent.terminate(timeout=30)
            hung = agent.log().count("did not return within")
            max_stall = watcher.max_stall_s()
        return {
            "rounds": rounds,
            **verdict(self.broker.bootstrap, topics, stream),
            "recovery_s": _rounded(recoveries),
            "recovery": _summary(recoveries),
            "hung_calls_recovered": hung,
            "max_stall_s": max_stall,
            "exit_codes": [exit_code],
            "load_before_after": [load, _load()],
        }

    def agent_kill(self, kills: int) -> dict[str, Any]:
        load = _load()
        recoveries: list[float | None] = []
        codes: list[int] = []
        with self.streaming("kill", seconds=30 + kills * STREAM_PER_MEMBER_ROUND_S) as (
            topics,
            stream,
            producer,
            watcher,
        ):
            agent = self.agent(topics, "chaos-kill", "kill-agent-0")
            agent.wait_ready()
            for life in range(kills):
                time.sleep(self.rng.uniform(2, 6))
                killed_at = time.monotonic()
                agent.kill()
                codes.append(agent.proc.returncode)
                agent = self.agent(topics, "chaos-kill", f"kill-agent-{life + 1}")
                settled = time.monotonic() + SETTLE_S
                recoveries.append(_waited(lambda t=settled: watcher.all_advanced_after(t), killed_at))
            producer.stop()
            stream.positions = producer.join(timeout=300)
            wait_drained(self.broker.bootstrap, watcher, timeout=300)
            codes.append(agent.terminate(timeout=30))
        return {
            "kills": kills,
            **verdict(self.broker.bootstrap, topics, stream),
            "recovery_s": _rounded(recoveries),
            "recovery": _summary(recoveries),
            "exit_codes": codes,
            "load_before_after": [load, _load()],
        }

    def rebalance(self, rounds: int) -> dict[str, Any]:
        load = _load()
        recoveries: list[float | None] = []
        sigterm_exit_s: list[float] = []
        codes: list[int] = []
        with self.streaming("rebalance", seconds=30 + rounds * STREAM_PER_MEMBER_ROUND_S) as (
            topics,
            stream,
            producer,
            watcher,
        ):
            agents = {name: self.agent(topics, name, f"{name}-0") for name in ("chaos-a", "chaos-b")}
            for agent in agents.values():
                agent.wait_ready()
            time.sleep(5)
            for i in range(rounds):
                name = ("chaos-a", "chaos-b")[i % 2]
                agent = agents[name]
                stopped_at = time.monotonic()
                if i % 10 == 9:
                    agent.kill()
                    codes.append(agent.proc.returncode)
                else:
                    codes.append(agent.terminate(timeout=30))
                    sigterm_exit_s.append(time.monotonic() - stopped_at)
                settled = time.monotonic() + SETTLE_S
                time.sleep(2)
                agents[name] = self.agent(topics, name, f"{name}-{i + 1}")
                recoveries.append(_waited(lambda t=settled: watcher.all_advanced_after(t), stopped_at))
                time.sleep(self.rng.uniform(3, 6))
            producer.stop()
            stream.positions = producer.join(timeout=300)
            wait_drained(self.broker.bootstrap, watcher, timeout=300)
            codes += [agent.terminate(timeout=30) for agent in agents.values()]
        return {
            "rounds": rounds,
            **verdict(self.broker.bootstrap, topics, stream),
            "recovery_s": _rounded(recoveries),
            "recovery": _summary(recoveries),
            "sigterm_exit_s": [round(s, 2) for s in sigterm_exit_s],
            "exit_codes": codes,
            "load_before_after": [load, _load()],
        }

    def hostile(self, count: int) -> dict[str, Any]:
        load = _load()
        records = mixed(count, self.rng)
        raw = [r for r in records if r.raw_header_names]
        plain = [r for r in records if not r.raw_header_names]
        good = json_records(
            make_events(self.datasets, normal=max(1, count // 20), bgl_alerts=0, foreign=0, seed=self.seed)
        )
        topics = self.topics(
            "hostile", PARTITIONS + 1, {"max.message.bytes": str(INPUT_TOPIC_MAX_MESSAGE_BYTES)}
        )
        positions: dict[tuple[int, int], Hostile | None] = {}
        producer = Producer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "message.max.bytes": INPUT_TOPIC_MAX_MESSAGE_BYTES + 100_000,
                "linger.ms": 20,
            }
        )
        queue: list[Hostile | None] = list(plain) + [None] * len(good)
        self.rng.shuffle(queue)
        good_iter = iter(good)

        def delivered(record: Hostile | None) -> Callable[[Any, Any], None]:
            def report(error: Any, msg: Any) -> None:
                if error is not None:
                    raise SystemExit(f"chaos: delivery failed: {error}")
                positions[(msg.partition(), msg.offset())] = record

            return report

        for item in queue:
            key, value, headers = (item.key, item.value, list(item.headers)) if item else next(good_iter)
            while True:
                try:
                    partition = self.rng.randrange(PARTITIONS)
                    producer.produce(
                        topics.input, key=key, value=value, headers=headers, partition=partition,
                        on_delivery=delivered(item),
                    )  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        if producer.flush(120) != 0:
            raise SystemExit("chaos: the hostile records were not all delivered")
        produce_raw(
            self.broker.bootstrap,
            topics.input,
            [(r.key, r.value, [(n, v) for n, v in r.headers if isinstance(n, bytes)]) for r in raw],
            partition=PARTITIONS,
        )
        positions.update({(PARTITIONS, offset): r for offset, r in enumerate(raw)})

        watcher = CommitWatcher(self.broker.bootstrap, topics.group, topics.input, PARTITIONS + 1)
        started = time.monotonic()
        agent = self.agent(topics, "chaos-hostile", "hostile-agent")
        try:
            wait_until(lambda: agent.metric(COMMITTED) > 0, timeout=120, interval=0.05, what="a first commit")
            first_commit = time.monotonic()
            rss_first_commit = _rss_kib(agent.proc.pid)
            wait_drained(self.broker.bootstrap, watcher, timeout=1800)
            drained_s = time.monotonic() - started
            rss_drained, rss_peak = _rss_kib(agent.proc.pid), _status_kib(agent.proc.pid, "VmHWM")
            processed = agent.metric("anomaly_agent_events_processed_total")
            internal = agent.metric('anomaly_agent_events_dead_lettered_total{reason="internal_error"}')
            code = agent.terminate(timeout=30)
            max_stall = watcher.max_group_stall_s(after=first_commit)
            max_partition_wait = watcher.max_stall_s(after=first_commit)
        finally:
            watcher.close()
        dead: dict[tuple[int, int], list[str]] = {}
        for msg in read_committed(self.broker.bootstrap, topics.dead_letter, timeout=300):
            h = dict(msg.headers() or [])
            dead.setdefault((int(h["dlq.source.partition"]), int(h["dlq.source.offset"])), []).append(
                h["dlq.reason"].decode()
            )
        wrong: Counter[str] = Counter()
        for position, record in positions.items():
            reasons = dead.get(position, [])
            expected = None if record is None else record.expected
            ok = (
                (expected is None and not reasons)
                or (expected == ANY_REASON and len(reasons) == 1)
                or (expected is not None and expected != ANY_REASON and reasons == [str(expected)])
            )
            if not ok:
                wrong[record.kind if record else "good"] += 1
        scored_expected = sum(1 for r in positions.values() if r is None or r.expected is None)
        return {
            "hostile_records": count,
            "good_records": len(good),
            "kinds": len({r.kind for r in records}),
            "accounted": len(positions) - sum(wrong.values()),
            "accounted_share": round((len(positions) - sum(wrong.values())) / len(positions), 6),
            "not_accounted_by_kind": dict(wrong),
            "dead_lettered": sum(len(v) for v in dead.values()),
            "scored": processed,
            "scored_expected": scored_expected,
            "internal_errors": internal,
            "drained_s": round(drained_s, 1),
            "max_stall_s": max_stall,
            "max_partition_wait_s": max_partition_wait,
            "alone": self._hostile_alone(),
            "rss_mib_first_commit_drained_peak": [
                None if kib is None else round(kib / 1024, 1)
                for kib in (rss_first_commit, rss_drained, rss_peak)
            ],
            "exit_codes": [code],
            "load_before_after": [load, _load()],
        }

    def _hostile_alone(self) -> dict[str, Any]:
        """Each hostile kind alone: produced with a good event behind it to an idle agent's only
        partition, timed until both are committed (batch wait and commit included)."""
        topics = self.topics("alone", 1, {"max.message.bytes": str(INPUT_TOPIC_MAX_MESSAGE_BYTES)})
        watcher = CommitWatcher(self.broker.bootstrap, topics.group, topics.input, 1, interval_s=0.05)
        producer = Producer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "message.max.bytes": INPUT_TOPIC_MAX_MESSAGE_BYTES + 100_000,
            }
        )
        good = json.dumps({"text": "RAS KERNEL INFO instruction cache parity error corrected"}).encode()
        seconds: dict[str, float | None] = {}
        agent = self.agent(topics, "chaos-alone", "alone-agent")
        try:
            agent.wait_ready()
            for i, kind in enumerate(KINDS):
                record = hostile_record(kind, self.rng)
                began = time.monotonic()
                if record.raw_header_names:
                    headers = [(n, v) for n, v in record.headers if isinstance(n, bytes)]
                    produce_raw(self.broker.bootstrap, topics.input, [(record.key, record.value, headers)])
                else:
                    producer.produce(
                        topics.input, key=record.key, value=record.value, headers=list(record.headers)
                    )
                producer.produce(topics.input, value=good)
                producer.flush(30)
                end = 2 * (i + 1)
                seconds[kind] = _waited(lambda e=end: watcher.latest().get(0, -1) >= e, began)
            code = agent.terminate(timeout=30)
        finally:
            watcher.close()
        done = [v for v in seconds.values() if v is not None]
        return {
            "kinds": len(KINDS),
            "seconds_by_kind": {k: None if v is None else round(v, 2) for k, v in seconds.items()},
            "max_s": round(max(done), 2) if done else None,
            "over_5_s": sorted(k for k, v in seconds.items() if v is None or v > 5),
            "exit_codes": [code],
        }

    def backlog(self, events: int) -> dict[str, Any]:
        """A backlog of ``events`` consumed at full speed (large batches of mixed lengths, the case
        that grows allocator arenas), RSS sampled every 2 s against the events processed."""
        load = _load()
        topics = self.topics("backlog")
        stream = build_stream(self.datasets, self.bundle, self.work, events, self.rng.randrange(1 << 30))
        producer = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 20})
        positions: list[tuple[int, int] | None] = [None] * len(stream.records)

        def delivered(index: int) -> Callable[[Any, Any], None]:
            def report(error: Any, msg: Any) -> None:
                if error is None:
                    positions[index] = (msg.partition(), msg.offset())

            return report

        for i, (key, value, headers) in enumerate(stream.records):
            while True:
                try:
                    producer.produce(
                        topics.input, key=key, value=value, headers=headers, on_delivery=delivered(i)
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
        if producer.flush(120) != 0 or None in positions:
            raise SystemExit("chaos: the backlog was not delivered")
        stream.positions = [p for p in positions if p is not None]
        watcher = CommitWatcher(self.broker.bootstrap, topics.group, topics.input, PARTITIONS)
        samples: list[tuple[float, float, int]] = []  # (seconds, events processed, RSS KiB)
        agent = self.agent(topics, "chaos-backlog", "backlog-agent")
        try:
            agent.wait_ready()
            start = time.monotonic()
            while True:
                processed = agent.metric("anomaly_agent_events_processed_total")
                rss = _rss_kib(agent.proc.pid)
                if rss is not None:
                    samples.append((round(time.monotonic() - start, 1), processed, rss))
                _, committed, ends = watcher.samples[-1] if watcher.samples else (0.0, {}, {1: 1})
                if committed and all(committed.get(p, -1) >= end for p, end in ends.items()):
                    break
                time.sleep(2)
            code = agent.terminate(timeout=30)
        finally:
            watcher.close()
        half = [s for s in samples if s[1] >= samples[-1][1] / 2]
        per_1000 = (
            (half[-1][2] - half[0][2]) / 1024 / max(1.0, (half[-1][1] - half[0][1]) / 1000) if half else None
        )
        return {
            "events": len(stream.records),
            **verdict(self.broker.bootstrap, topics, stream),
            "events_per_s": round(samples[-1][1] / max(samples[-1][0], 1e-9), 1) if samples else None,
            "rss_mib_by_events": {
                f"{int(n)}": round(kib / 1024, 1) for _, n, kib in samples[:: max(1, len(samples) // 20)]
            },
            "rss_mib_second_half": [round(half[0][2] / 1024, 1), round(half[-1][2] / 1024, 1)]
            if half
            else None,
            "rss_growth_second_half": round((half[-1][2] - half[0][2]) / half[0][2], 4) if half else None,
            "rss_mib_per_1000_events_second_half": None if per_1000 is None else round(per_1000, 3),
            "exit_codes": [code],
            "load_before_after": [load, _load()],
        }

    def soak(self, minutes: float) -> dict[str, Any]:
        load = _load()
        samples: list[tuple[float, int]] = []
        seconds = minutes * 60
        with self.streaming("soak", seconds=seconds + 30) as (topics, stream, producer, watcher):
            agent = self.agent(topics, "chaos-soak", "soak-agent")
            agent.wait_ready()
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                rss = _rss_kib(agent.proc.pid)
                if rss is not None:
                    samples.append((round(time.monotonic() - start, 1), rss))
                time.sleep(5)
            producer.stop()
            stream.positions = producer.join(timeout=300)
            wait_drained(self.broker.bootstrap, watcher, timeout=300)
            peak = _status_kib(agent.proc.pid, "VmHWM")
            code = agent.terminate(timeout=30)
        half = [kib for t, kib in samples if t >= seconds / 2]
        growth = (half[-1] - half[0]) / half[0] if len(half) >= 2 else None
        return {
            "minutes": minutes,
            **verdict(self.broker.bootstrap, topics, stream),
            "rss_mib_at": {
                f"{t:.0f}s": round(kib / 1024, 1) for t, kib in samples[:: max(1, len(samples) // 20)]
            },
            "rss_mib_half_time_and_end": [round(half[0] / 1024, 1), round(half[-1] / 1024, 1)]
            if half
            else None,
            "rss_growth_second_half": None if growth is None else round(growth, 4),
            "peak_rss_mib": None if peak is None else round(peak / 1024, 1),
            "exit_codes": [code],
            "load_before_after": [load, _load()],
        }


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kib(pid: int) -> int | None:
    return _status_kib(pid, "VmRSS")


SCENARIOS = ("broker_restart", "agent_kill", "rebalance", "hostile", "backlog", "soak")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the CI-sized run")
    size.add_argument("--full", action="store_true", help="the issue's sizes (the default)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--soak-minutes", type=float, help="override the soak length")
    parser.add_argument(
        "--size", action="append", default=[], metavar="SCENARIO=N", help="override one scenario's size"
    )
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = dict(SIZES["small" if args.small else "full"])
    for override in args.size:
        name, _, value = override.partition("=")
        if name not in sizes or not value.isdigit():
            raise SystemExit(f"chaos: --size takes SCENARIO=N with SCENARIO one of {', '.join(sizes)}")
        sizes[name] = int(value)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"chaos: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        suite = Suite(work, args.datasets, args.seed)
        report: dict[str, Any] = {
            "bench": "chaos",
            "size": "small" if args.small else "full",
            "sizes": sizes,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_at_start": _load(),
            },
            "scenarios": {},
        }
        started = time.monotonic()
        try:
            suite.setup()
            for name in chosen:
                began = time.monotonic()
                if name == "soak":
                    result = suite.soak(
                        args.soak_minutes if args.soak_minutes is not None else sizes["soak_seconds"] / 60
                    )
                else:
                    result = getattr(suite, name)(sizes[name])
                result["seconds"] = round(time.monotonic() - began, 1)
                report["scenarios"][name] = result
                print(json.dumps({name: result}), file=sys.stderr, flush=True)
        finally:
            suite.kill_leftovers()
            suite.broker.stop()
        report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
