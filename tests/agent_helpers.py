"""Shared helpers for the agent's broker tests: a trained bundle, events, the agent as a process,
and reading what it wrote the way subscribers do (``isolation.level=read_committed``).

The bundle fixture trains through the CLI (``anomaly-agent train``) on BGL normal lines, and
expected results come from ``anomaly-agent score``: the tests compare the running agent with the
offline tool an operator would use, not with a re-implementation. tests/conftest.py registers
this module as a pytest plugin, so its fixtures are available to every test.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from shared_resources import shared

from agent.config import Settings, load_settings
from exporters.alerts import session_alert_id

REPO_ROOT = Path(__file__).resolve().parent.parent
# Lines of BGL_2k used to train the session bundle; events replayed to the agent come after them.
TRAIN_NORMAL_LINES = 500
AGENT_START_TIMEOUT_S = 90.0
# (key, value, headers) of one input record.
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


# ----------------------------------------------------------------------------- data


def bgl_lines(datasets_dir: Path) -> tuple[list[str], list[str]]:
    """(normal, alert) texts of the BGL sample, without the label column."""
    normal: list[str] = []
    alerts: list[str] = []
    for line in (
        (datasets_dir / "bgl_2k" / "BGL_2k.log").read_text(encoding="utf-8", errors="replace").splitlines()
    ):
        label, _, text = line.partition(" ")
        if text.strip():
            (normal if label == "-" else alerts).append(text)
    return normal, alerts


def foreign_texts(datasets_dir: Path, limit: int) -> list[str]:
    """Text that is nothing like a supercomputer log: SMS messages (certain anomalies for BGL)."""
    rows = (datasets_dir / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8", errors="replace")
    return [row.split("\t", 1)[1] for row in rows.splitlines()[1 : limit + 1] if "\t" in row]


def make_events(
    datasets_dir: Path, *, normal: int, bgl_alerts: int, foreign: int, seed: int
) -> list[dict[str, Any]]:
    """JSON events ``{"text", "host", "seq"}``: held-out normal BGL lines, BGL alert lines and SMS
    texts, shuffled with ``seed``. ``seq`` is the event's index in the returned list."""
    normal_lines, alert_lines = bgl_lines(datasets_dir)
    rng = random.Random(seed)
    held_out = normal_lines[TRAIN_NORMAL_LINES:]
    texts = (
        rng.sample(held_out, normal)
        + rng.sample(alert_lines, bgl_alerts)
        + rng.sample(foreign_texts(datasets_dir, 300), foreign)
    )
    rng.shuffle(texts)
    return [{"text": text, "host": f"node-{i % 7}", "seq": i} for i, text in enumerate(texts)]


@pytest.fixture(scope="session")
def agent_bundle(pytestconfig: pytest.Config, datasets_dir: Path, embedder_dir: Path) -> Path:
    """A knn bundle trained with ``anomaly-agent train`` on the first BGL normal lines (once per run)."""
    path: str = shared(
        pytestconfig,
        "agent-bundle",
        lambda work, _: (str(_bgl_bundle(work, datasets_dir, embedder_dir, "--detector", "knn")), None),
    )
    return Path(path)


@pytest.fixture(scope="session")
def default_bundle(pytestconfig: pytest.Config, datasets_dir: Path, embedder_dir: Path) -> Path:
    """A bundle of train's *default* detector (no ``--detector``), on the same lines as ``agent_bundle``."""
    path: str = shared(
        pytestconfig,
        "default-bundle",
        lambda work, _: (str(_bgl_bundle(work, datasets_dir, embedder_dir)), None),
    )
    return Path(path)


def _bgl_bundle(work: Path, datasets_dir: Path, embedder_dir: Path, *train_args: str) -> Path:
    normal, _ = bgl_lines(datasets_dir)
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in normal[:TRAIN_NORMAL_LINES]))
    out = work / "bundle"
    result = cli(
        "train", "--input", str(train), "--text-field", "text", *train_args,
        "--embedder", str(embedder_dir), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, f"anomaly-agent train failed:\n{result.stderr}"
    return out


def cli(
    *args: str, timeout: float = 300.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent.cli ARGS`` with the test's environment (offline, no agent overrides
    but ``env``, e.g. ``agent_env(...)``)."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO_ROOT,
        env=clean_env() | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def offline_anomalies(bundle: Path, events: Sequence[Mapping[str, Any]], work: Path) -> list[bool]:
    """``is_anomaly`` per event according to ``anomaly-agent score`` (input order)."""
    path = work / f"score-input-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = cli("score", "--bundle", str(bundle), "--input", str(path), "--text-field", "text")
    assert result.returncode == 0, f"anomaly-agent score failed:\n{result.stderr}"
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == len(events), f"score printed {len(rows)} rows for {len(events)} events"
    return [bool(row["is_anomaly"]) for row in rows]


# ----------------------------------------------------------------------------- Kafka I/O


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[Record],
    *,
    timestamps: Sequence[int] | None = None,
    flush_s: float = 30.0,
) -> list[tuple[int, int]]:
    """Produce (key, value, headers) records in order (``timestamps``: each one's Kafka timestamp
    in ms, e.g. a log line's own time); returns each one's (partition, offset). A full local queue
    waits for deliveries, so a stream of any length goes through."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    positions: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[KafkaError] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                errors.append(error)
            else:
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                positions[index] = (partition, offset)

        return report

    for i, (key, value, headers) in enumerate(records):
        stamp = {} if timestamps is None else {"timestamp": timestamps[i]}
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=delivered(i), **stamp
                )
                break
            except BufferError:  # the local queue is full: let deliveries make room
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(flush_s) == 0, f"producer did not deliver everything within {flush_s} s"
    assert not errors, f"delivery failed: {errors[:3]}"
    placed = [p for p in positions if p is not None]
    assert len(placed) == len(records), "a record without a delivery report"
    return placed


class StreamProducer:
    """Produces records in order at about ``rate`` records/s on a background thread, recording
    where each one landed; ``join`` waits for the end of the stream and checks every delivery."""

    def __init__(self, bootstrap: str, topic: str, records: Sequence[Record], *, rate: float) -> None:
        self.positions: list[tuple[int, int] | None] = [None] * len(records)
        self.produced = 0
        self._records = records
        self._topic = topic
        self._interval = 1.0 / rate
        self._errors: list[KafkaError] = []
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-producer", daemon=True)
        self._thread.start()

    def _report(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                self._errors.append(error)
            else:
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                self.positions[index] = (partition, offset)

        return report

    def stop(self) -> None:
        """End the stream early; ``join`` then covers the records produced so far."""
        self._stopped.set()

    def _run(self) -> None:
        start = time.monotonic()
        for i, (key, value, headers) in enumerate(self._records):
            delay = start + i * self._interval - time.monotonic()
            if self._stopped.wait(delay) if delay > 0 else self._stopped.is_set():
                break
            self._producer.produce(
                self._topic, value=value, key=key, headers=headers, on_delivery=self._report(i)
            )
            self._producer.poll(0)
            self.produced = i + 1
        self._producer.flush(30)

    def join(self, timeout: float) -> list[tuple[int, int]]:
        """Where each produced record landed (all of them, unless ``stop`` ended the stream)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream did not finish within {timeout} s"
        assert not self._errors, f"delivery failed: {self._errors[:3]}"
        produced = self.positions[: self.produced]
        assert all(p is not None for p in produced), "not every record was delivered"
        return [p for p in produced if p is not None]


def json_records(events: Sequence[Mapping[str, Any]]) -> list[Record]:
    return [(f"key-{e['seq']}".encode(), json.dumps(e).encode(), None) for e in events]


def read_committed(
    bootstrap: str, topic: str, *, timeout: float = 30.0, quiet_s: float = 1.5
) -> list[Message]:
    """Every committed record of ``topic`` from the beginning, read as subscribers read (read_committed).

    Returns when each partition's position reached the high watermark (aborted records and
    transaction markers are skipped) or, failing that, after ``quiet_s`` without a new record.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p, 0) for p in partitions]
        consumer.assign(tps)
        highs = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(500, 0.2)
            fresh = [m for m in batch if m.error() is None]
            messages += fresh
            if fresh:
                last_new = time.monotonic()
            positions = {tp.partition: tp.offset for tp in consumer.position(tps)}
            if all(highs[p] == 0 or positions[p] >= highs[p] for p in highs):
                break
            if time.monotonic() - last_new >= quiet_s:
                break
        return messages
    finally:
        consumer.close()


def offsets(
    bootstrap: str, group: str, topic: str, *, stable: bool = True
) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offsets of ``group``, high watermarks) per partition of ``topic``.

    ``stable``: a read_committed consumer asks for stable offsets (KIP-447), so while a killed
    member's transaction is pending the broker answers UNSTABLE_OFFSET_COMMIT until it is aborted,
    and the call times out; ``stable=False`` reads the offsets last committed, without waiting.
    """
    config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    if not stable:
        config["isolation.level"] = "read_uncommitted"
    consumer = Consumer(config)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        highs = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        return committed, highs
    finally:
        consumer.close()


def wait_caught_up(bootstrap: str, group: str, topic: str, *, timeout: float) -> None:
    """Wait until ``group`` has committed every partition of ``topic`` up to its high watermark."""
    committed, highs = {}, {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed, highs = offsets(bootstrap, group, topic)
        except KafkaException as exc:
            # A fresh broker's group coordinator still loading (NOT_COORDINATOR), or a member's
            # transaction pending (stable offsets wait for it: _TIMED_OUT): not caught up yet.
            error = exc.args[0]
            if not (error.retriable() or error.code() in (KafkaError.NOT_COORDINATOR, KafkaError._TIMED_OUT)):
                raise
        else:
            if committed == highs:
                return
        time.sleep(0.5)
    raise AssertionError(f"group {group} did not catch up on {topic}: committed {committed}, ends {highs}")


def alert_sources(messages: Sequence[Message]) -> list[tuple[int, int]]:
    """The (partition, offset) of the input record behind each alert."""
    out: list[tuple[int, int]] = []
    for msg in messages:
        source = json.loads(msg.value() or b"{}")["source"]
        out.append((int(source["partition"]), int(source["offset"])))
    return out


def expected_session_alerts(
    topic: str, positions: Sequence[tuple[int, int]], flagged: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The session alerts an agent publishing one alert per event must publish for the sessions
    ``score --sessions`` flagged (its JSON rows), by alert id, in ``published_session_alerts``'
    form: a decisive session at its decisive step, the others at their close (with their events
    and score). ``positions``: the (partition, offset) of each line of the replayed input."""
    out: dict[str, dict[str, Any]] = {}
    for row in flagged:
        partition, first = positions[row["first_line"] - 1]
        at = row["alerted_line"] if row["decisive"] else row["last_line"]
        last = positions[at - 1]
        assert last[0] == partition, "a session's lines share a partition"
        out[session_alert_id(topic, partition, row["session"], first)] = {
            "key": row["session"],
            "partition": partition,
            "first": first,
            "last": last[1],
            "decisive": row["decisive"],
            "events": None if row["decisive"] else row["events"],
            "score": None if row["decisive"] else row["score"],
            "signature": row["signature"],
        }
    return out


def published_session_alerts(docs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The session alerts among the alert documents ``docs``, by id: key, partition, first and last
    offset, decisive (at its decisive step: reason "open"), and for a session alerted at its close
    its events and score."""
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        if d["kind"] != "session":
            continue
        s = d["session"]
        decisive = s["reason"] == "open"
        out[d["id"]] = {
            "key": s["key"],
            "partition": d["source"]["partition"],
            "first": s["first"]["offset"],
            "last": s["last"]["offset"],
            "decisive": decisive,
            "events": None if decisive else s["events"],
            "score": None if decisive else d["score"],
            "signature": s["signature"],
        }
    return out


# ----------------------------------------------------------------------------- the agent process


def clean_env() -> dict[str, str]:
    """This process's environment minus anything that would configure the agent behind a test's back."""
    drop = ("ANOMALY_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class AgentTopics:
    input: str
    alerts: str
    dead_letter: str
    group: str


def pipeline_settings(
    bootstrap: str,
    agent_topics: AgentTopics,
    bundle: Path,
    *,
    instance_id: str,
    batch_size: int,
    **sections: Any,
) -> Settings:
    """Settings for an in-process ``Pipeline``, the twin of ``agent_env``: one thread, no bundle
    watcher, 100 ms batch wait. ``sections`` (``events={...}``, ``delivery=...``) are merged over
    these, key by key within a section."""
    settings: dict[str, Any] = {
        "instance_id": instance_id,
        "kafka": {"bootstrap_servers": bootstrap, "group_id": agent_topics.group},
        "topics": {
            "input": [agent_topics.input],
            "alerts": agent_topics.alerts,
            "dead_letter": agent_topics.dead_letter,
        },
        "model": {"bundle": bundle, "intra_op_threads": 1, "watch": False},
        "batch": {"max_size": batch_size, "max_wait_ms": 100},
        # One alert per anomalous event: the per-event guarantees (exactly once, nothing lost)
        # are checked event by event. Grouping and rates (the product defaults, which need the
        # state changelog and its ACLs) have tests of their own.
        "alerts": {"group_by": "event"},
        "rates": {"enabled": False},
    }
    for name, value in sections.items():
        settings[name] = {**settings.get(name, {}), **value} if isinstance(value, dict) else value
    return load_settings(**settings)


def agent_env(
    bootstrap: str,
    topics: AgentTopics,
    bundle: Path,
    *,
    instance_id: str,
    **extra: str,
) -> dict[str, str]:
    """Environment overrides for ``anomaly-agent run`` (ports 0: the agent logs what it bound).

    ``extra`` keys are setting paths with ``__`` (``batch__max_size="16"``).
    """
    env = {
        "KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA__GROUP_ID": topics.group,
        # The broker's minimum: a killed member leaves the group after 6 s instead of 45 s.
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "TOPICS__INPUT": json.dumps([topics.input]),
        "TOPICS__ALERTS": topics.alerts,
        "TOPICS__DEAD_LETTER": topics.dead_letter,
        "MODEL__BUNDLE": str(bundle),
        "MODEL__WATCH": "false",
        "MODEL__INTRA_OP_THREADS": "1",
        "INSTANCE_ID": instance_id,
        "METRICS__PORT": "0",
        "HEALTH__PORT": "0",
        "BATCH__MAX_SIZE": "32",
        "BATCH__MAX_WAIT_MS": "100",
        "LIFECYCLE__SHUTDOWN_GRACE_SECONDS": "15",
        "ALERTS__GROUP_BY": "event",  # see pipeline_settings
        "RATES__ENABLED": "false",
    }
    env.update({k.upper(): v for k, v in extra.items()})
    return {f"ANOMALY_AGENT_{k}": v for k, v in env.items()}


class AgentProcess:
    """``python -m agent.cli run`` in a subprocess, its log in a file, its ports read from the log."""

    def __init__(
        self, overrides: Mapping[str, str], log_path: Path, *, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        env = clean_env() | dict(overrides) | dict(extra_env or {})
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._metrics_port: int | None = None
        self._health_port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = AGENT_START_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.tail()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"agent did not log {pattern!r} within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def metrics_port(self) -> int:
        if self._metrics_port is None:
            self._metrics_port = int(self.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        return self._metrics_port

    @property
    def health_port(self) -> int:
        if self._health_port is None:
            self._health_port = int(self.wait_for_log(r"health on http://[^:]+:(\d+)/healthz").group(1))
        return self._health_port

    def metrics(self) -> dict[str, float]:
        """Current samples as ``{'name{label="v",...}': value}`` (labels sorted), '' labels as bare name."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def probe(self, path: str) -> int:
        """HTTP status of GET ``path`` on the health server."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def wait_ready(self, timeout: float = AGENT_START_TIMEOUT_S) -> None:
        self.wait_for_log(r"ready: model loaded, group joined", timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and an assertion error if it outlives ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"agent did not exit within {timeout} s of SIGTERM:\n{self.tail()}"
            ) from None
        self._log.close()
        return code

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"agent still running after {timeout} s:\n{self.tail()}") from None
        self._log.close()
        return code


@pytest.fixture
def agent_processes() -> Iterator[list[AgentProcess]]:
    """Collects agents a test starts and kills any still running at teardown."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.kill()


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class NotifyListener:
    """A systemd notification socket: collects every datagram the agent sends."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")  # AF_UNIX paths max 107 bytes
        self.path = os.path.join(self._dir, "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        return [line for _, message in self.messages for line in message.splitlines()]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()
