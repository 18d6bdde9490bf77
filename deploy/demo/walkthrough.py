"""``anomaly-agent demo`` (``make demo``): the whole product, end to end, on one machine.

An orchestrator of the product, not part of it: it lives beside its data in ``deploy/demo/`` and
``anomaly-agent demo`` loads it from the source checkout (``agent.cli.cmd_demo``).

What it does, in order (docs/demo.md shows a session):

1. starts a local single-node Kafka broker with ``deploy/local/kafka.sh`` (state in
   ``var/demo/kafka``, wiped first so every run starts from empty topics) — or uses the broker
   named by ``ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS`` when that is set;
2. creates the input, alert and dead-letter topics named in ``deploy/demo/agent.toml``;
3. trains a model bundle on ``deploy/demo/train.jsonl`` (900 normal service-log events shipped in
   the project, among them the lines of 24 complete request sessions) with ``anomaly-agent
   train``, which exports the default embedder to ONNX once into the cache and fits the session
   model with the key and gap of ``[sessions]``; a bundle already trained from the same data and
   flags is verified and reused;
4. starts the agent exactly as an operator would, ``anomaly-agent run --config
   deploy/demo/agent.toml`` in its own process, with environment overrides for the broker
   address, the bundle path and, if 9464/8080 are taken, the metrics/health ports, and waits for
   ``/readyz``;
5. replays ``deploy/demo/history.jsonl`` first, at once, on the input topic's partition 1 with its
   own event times (45 minutes of platform logs in which a cache stampede makes one line surge and a
   heartbeat stops: one ``spike`` and one ``silence``, docs/rates.md), then
   ``deploy/demo/requests.jsonl`` on partition 2 the same way (8 request sessions, one of which
   never logs its last step: one ``session`` alert, docs/sessions.md), then
   ``deploy/demo/stream.jsonl`` on partition 0 (normal events with stack traces, OOM kills, disk
   failures, brute-force attempts... spread through it, and three malformed records) at ``--rate``
   events/s, printing every alert (read with ``isolation.level=read_committed``) and dead letter as
   it arrives, with whether that event was meant to be anomalous;
6. keeps running until Ctrl-C (or, with ``--exit-after-replay``, until the agent has committed
   the offsets of every replayed event and the alerts have been read), then stops the agent with
   SIGTERM (it drains its batch, commits and exits 0), closes the clients, stops the broker it
   started (a broker it did not start is left running) and prints a summary, also written to
   ``<state dir>/summary.json``.

The agent runs in its own session (process group) so the terminal's Ctrl-C reaches only the
demo, which then shuts things down in order; the broker is started with ``--owner-pid`` so it
stops even if the demo is killed outright. The demo is an orchestrator: it never imports the
training side (torch), only runs the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, Settings, load_settings
from agent.model.bundle import BundleError, verify_bundle
from agent.model.textprep import TextPreparation

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEMO_DIR = REPO_ROOT / "deploy" / "demo"
CONFIG_FILE = DEMO_DIR / "agent.toml"
TRAIN_FILE = DEMO_DIR / "train.jsonl"
STREAM_FILE = DEMO_DIR / "stream.jsonl"
HISTORY_FILE = DEMO_DIR / "history.jsonl"
REQUESTS_FILE = DEMO_DIR / "requests.jsonl"
# The input topic's partitions: the live stream on 0, the platform's history (rates) on 1, the
# request sessions on 2, each with its own event time.
STREAM_PARTITION, HISTORY_PARTITION, REQUEST_PARTITION = 0, 1, 2
INPUT_PARTITIONS = 3
# What history.jsonl holds for the agent's rates: one stampede (spike), one heartbeat that stops.
EXPECTED_RATE_ALERTS = {"spike": 1, "silence": 1}
# The training field the session model reads event times from (the events' own "ts").
SESSION_TIME_FIELD = "ts"
KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"
DEFAULT_STATE_DIR = REPO_ROOT / "var" / "demo"
DETECTOR = "knn"
BOOTSTRAP_ENV = "ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS"
# How long the agent may take from start to /readyz (a cold onnxruntime session load included).
READY_TIMEOUT_S = 180.0
# --exit-after-replay: how long after the last send the agent may take to commit everything.
DRAIN_TIMEOUT_S = 180.0
# Once every input offset is committed, the matching alerts are committed too (same transaction);
# this is how long to keep reading them after the last one arrived before calling it complete.
SETTLE_S = 2.0
EXIT_INTERRUPTED = 130


class DemoError(Exception):
    """A step of the demo failed; the message says which and where to look."""


# --- the replayed stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRecord:
    """One line of stream.jsonl: what to send and what it is (normal, anomaly or malformed)."""

    label: str
    value: dict[str, Any] | str

    @property
    def service(self) -> str:
        return str(self.value.get("service", "-")) if isinstance(self.value, dict) else "-"

    def payload(self, now: datetime) -> bytes:
        """The Kafka value: the event as JSON with ``ts`` set to the send time, or the raw string."""
        if isinstance(self.value, str):
            return self.value.encode("utf-8")
        event = dict(self.value)
        event["ts"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps(event, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class HistoryRecord:
    """One line of history.jsonl: an event ``at_ms`` after the history's start, and what it is
    (normal, part of the stampede, or the heartbeat that stops)."""

    at_ms: int
    label: str
    value: dict[str, Any]

    def payload(self) -> bytes:
        return json.dumps(self.value, ensure_ascii=False).encode("utf-8")


def load_history(path: Path) -> list[HistoryRecord]:
    """history.jsonl, or requests.jsonl (the same shape: ``label`` "normal" or "broken" there)."""
    return [HistoryRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def session_keys(records: list[HistoryRecord], pattern: str) -> dict[str, str]:
    """Each request session's key (found as the agent finds it: ``[sessions] key_pattern`` on the
    raw text) and its label: "broken" for the session that never logs its last step."""
    compiled = re.compile(pattern)
    keys: dict[str, str] = {}
    for record in records:
        match = compiled.search(str(record.value.get("message", "")))
        if match is not None:
            keys[match.group(1)] = record.label
    return keys


def load_stream(path: Path, count: int | None) -> list[StreamRecord]:
    """The first ``count`` records of the stream (all when None), cycling through it when longer."""
    records = [StreamRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise DemoError(f"{path} holds no records")
    if count is None:
        return records
    return [records[i % len(records)] for i in range(count)]


# --- output ------------------------------------------------------------------------------------


class Console:
    """Aligned, optionally coloured lines on stdout; one place that knows the column layout."""

    COLUMNS = "  {time:<8}  {kind:<7}  {score:>6}  {offset:>6}  {truth:<14}  {service:<16}  {text}"

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.colour = out.isatty() and os.environ.get("NO_COLOR") is None

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, number: int, title: str, detail: str) -> None:
        self.line(f"{self._paint(f'[{number}/5]', '1')} {title:<16} {detail}")

    def info(self, text: str) -> None:
        self.line(f"      {text}")

    def header(self) -> None:
        self.line()
        self.line(
            self._paint(
                self.COLUMNS.format(
                    time="TIME",
                    kind="KIND",
                    score="SCORE",
                    offset="OFFSET",
                    truth="EXPECTED",
                    service="SERVICE",
                    text="TEXT",
                ),
                "1",
            )
        )

    def record(
        self, *, kind: str, score: float | None, offset: int, truth: str, service: str, text: str
    ) -> None:
        first, _, rest = text.strip().partition("\n")
        if rest:
            first += f" (+{rest.count(chr(10)) + 1} lines)"
        prefix = self.COLUMNS.format(
            time=datetime.now().strftime("%H:%M:%S"),
            kind=kind,
            score="" if score is None else f"{score:.2f}",
            offset=offset,
            truth=truth,
            service=service[:16],
            text="",
        )
        width = shutil.get_terminal_size((160, 24)).columns
        room = max(20, width - len(prefix))
        shown = first if len(first) <= room else first[: room - 1] + "…"
        colour = {
            "ALERT": "31" if truth == "anomaly" else "33",
            "SPIKE": "31",
            "SILENCE": "31",
            "SESSION": "31" if truth == "broken" else "33",
            "SUMMARY": "36",
            "DLQ": "35",
        }.get(kind, "0")
        self.line(self._paint(prefix, colour) + shown)


# --- processes and clients ---------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_available(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _kafka_sh(command: str, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Runs deploy/local/kafka.sh; its human-readable progress goes straight to our stderr.

    In its own session: a Ctrl-C during a start must not kill the script between launching the
    JVM and arming its owner watchdog; the demo lets the start finish, then stops the broker.
    """
    return subprocess.run(
        ["bash", str(KAFKA_SH), command, "--dir", str(state_dir), *extra],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        start_new_session=True,
    )


@dataclass
class Broker:
    """The broker the demo talks to; ``owned`` when this run started it (and so stops it)."""

    bootstrap: str
    owned: bool
    fresh: bool
    state_dir: Path | None

    @classmethod
    def acquire(cls, state_dir: Path) -> Broker:
        external = os.environ.get(BOOTSTRAP_ENV)
        if external:
            return cls(bootstrap=external, owned=False, fresh=False, state_dir=None)
        running = _kafka_sh("status", state_dir).returncode == 0
        if not running:
            # A stopped demo broker's data is the previous run's: start from empty topics.
            shutil.rmtree(state_dir, ignore_errors=True)
        done = _kafka_sh("start", state_dir, "--owner-pid", str(os.getpid()))
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            _kafka_sh("stop", state_dir)
            raise DemoError(
                f"deploy/local/kafka.sh start failed (exit {done.returncode}); see its messages above"
            )
        return cls(bootstrap=lines[-1].strip(), owned=not running, fresh=not running, state_dir=state_dir)

    def release(self) -> str:
        if not self.owned or self.state_dir is None:
            return "left running" if self.state_dir is not None else "external, untouched"
        done = _kafka_sh("stop", self.state_dir)
        return "stopped" if done.returncode == 0 else f"stop failed (exit {done.returncode})"


@dataclass(frozen=True)
class Names:
    """Topic and group names for this run (suffixed when the broker may hold earlier runs' data)."""

    input: str
    alerts: str
    dead_letter: str
    group_id: str

    @classmethod
    def for_run(cls, settings: Settings, suffix: str) -> Names:
        return cls(
            input=settings.topics.input[0] + suffix,
            alerts=settings.topics.alerts + suffix,
            dead_letter=settings.topics.dead_letter + suffix,
            group_id=settings.kafka.group_id + suffix,
        )


def create_topics(bootstrap: str, names: Names) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [NewTopic(names.input, num_partitions=INPUT_PARTITIONS, replication_factor=1)] + [
        NewTopic(t, num_partitions=1, replication_factor=1) for t in (names.alerts, names.dead_letter)
    ]
    for topic, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DemoError(f"creating topic {topic} on {bootstrap}: {exc}") from exc


def train_flags(settings: Settings) -> list[str]:
    """``anomaly-agent train``'s flags for the demo bundle: the detector, and the session model
    fitted with the key and gap the agent's ``[sessions]`` names (they must agree)."""
    sessions = settings.sessions
    flags = ["--text-field", "message", "--detector", DETECTOR]
    if sessions.key_pattern is not None:
        flags += ["--session-key-pattern", sessions.key_pattern]
    if sessions.key_field is not None:
        flags += ["--session-key-field", sessions.key_field]
    if sessions.key_pattern is None and sessions.key_field is None:
        return flags
    if sessions.gap_seconds is not None:
        flags += ["--session-gap-seconds", f"{sessions.gap_seconds:g}"]
    return [*flags, "--session-time-field", SESSION_TIME_FIELD]


def _fingerprint(flags: list[str]) -> str:
    digest = hashlib.sha256(TRAIN_FILE.read_bytes())
    digest.update("\0".join(flags).encode())
    return digest.hexdigest()


def ensure_bundle(bundle: Path, env: Mapping[str, str], flags: list[str]) -> str:
    """Trains the demo bundle unless one trained from the same data and flags verifies; says which
    it did."""
    stamp = bundle.with_name(bundle.name + ".source-sha256")
    fingerprint = _fingerprint(flags)
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        try:
            verify_bundle(bundle)
        except BundleError:
            pass
        else:
            return "reused (same training data, files verified)"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "agent.cli", "train", "--input", str(TRAIN_FILE), *flags, "--out", str(bundle),
    ]  # fmt: skip
    # The summary JSON train prints goes to a file; its progress (stderr) is the user's to see.
    done = subprocess.run(command, env=dict(env), check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise DemoError(f"training the demo bundle failed (exit {done.returncode}): {' '.join(command)}")
    bundle.with_name(bundle.name + ".train.json").write_text(done.stdout)
    stamp.write_text(fingerprint + "\n")
    return "trained"


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def scrape(metrics_url: str) -> dict[str, float]:
    """The agent's counters from /metrics by sample name (``..._total``), summed over labels."""
    status, body = _get(metrics_url)
    if status != 200:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Agent:
    """``anomaly-agent run`` as a child process in its own session, output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any

    @classmethod
    def start(cls, env: Mapping[str, str], log_path: Path) -> Agent:
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(CONFIG_FILE)],
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C is the demo's to handle, in order
        )
        return cls(process=process, log_path=log_path, log_file=log_file)

    def wait_ready(self, readyz: str, stop: StopFlag) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not stop.is_set():
            if self.process.poll() is not None:
                raise DemoError(
                    f"the agent exited with {self.process.returncode} before it was ready; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _get(readyz, timeout=1.0)[0] == 200:
                return
            time.sleep(0.25)
        if not stop.is_set():
            raise DemoError(f"the agent was not ready within {READY_TIMEOUT_S:.0f}s; see {self.log_path}")

    def stop(self, grace_s: float) -> int:
        """SIGTERM, wait for the graceful exit (drain, commit, close); SIGKILL only past the grace."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return int(self.process.returncode)


class StopFlag:
    """Set by the first SIGINT/SIGTERM; a second Ctrl-C raises KeyboardInterrupt (the impatient exit)."""

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self._set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._set = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# --- the replay and the readers ----------------------------------------------------------------


@dataclass
class Tally:
    """What was sent and what came back, keyed by input offset so alerts map to their events."""

    sent: Counter[str] = field(default_factory=Counter)
    by_offset: dict[int, StreamRecord] = field(default_factory=dict)
    alerts: dict[int, float] = field(default_factory=dict)
    # Alert grouping: the pattern (prepared text) of each alert, and the events each summary counted.
    alerted_patterns: set[str] = field(default_factory=set)
    summaries: list[int] = field(default_factory=list)
    dead_letters: dict[int, str] = field(default_factory=dict)
    delivery_errors: list[str] = field(default_factory=list)
    prepare: Callable[[str], str] | None = None  # the bundle's text preparation
    # The history's rate alerts: kind -> templates alerted (spike, silence), and events sent.
    rate_alerts: dict[str, list[str]] = field(default_factory=dict)
    history_sent: int = 0
    # The request sessions: key -> label ("normal", "broken"), lines sent, and the session alerts.
    request_sessions: dict[str, str] = field(default_factory=dict)
    request_service: str = "-"
    requests_sent: int = 0
    session_alerts: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        anomalous = {o for o, r in self.by_offset.items() if r.label == "anomaly"}
        malformed = {o for o, r in self.by_offset.items() if r.label == "malformed"}
        alerted = set(self.alerts)
        # An anomalous event without an alert of its own is covered by its pattern's alert (the
        # window it was counted in): alert grouping, one alert per pattern and cooldown.
        grouped = {
            o
            for o in anomalous - alerted
            if self.prepare is not None and self.prepare(_message(self.by_offset[o])) in self.alerted_patterns
        }
        return {
            "events_sent": sum(self.sent.values()),
            "events_sent_by_label": dict(self.sent),
            "alerts_received": len(self.alerts),
            "summaries_received": len(self.summaries),
            "events_in_summaries": sum(self.summaries),
            "anomalies_alerted": len(alerted & anomalous),
            "anomalies_grouped": len(grouped),
            "anomalies_missed_offsets": sorted(anomalous - alerted - grouped),
            "false_positive_offsets": sorted(alerted - anomalous),
            "dead_letters_received": len(self.dead_letters),
            "dead_letter_reasons": dict(Counter(self.dead_letters.values())),
            "malformed_not_dead_lettered_offsets": sorted(malformed - set(self.dead_letters)),
            "history_events_sent": self.history_sent,
            "rate_alerts_received": {kind: len(t) for kind, t in sorted(self.rate_alerts.items())},
            "rate_alerts_expected": EXPECTED_RATE_ALERTS,
            "rate_alert_templates": self.rate_alerts,
            "request_sessions_sent": len(self.request_sessions),
            "request_events_sent": self.requests_sent,
            "session_alerts_received": len(self.session_alerts),
            "session_alert_keys": [str(a["key"]) for a in self.session_alerts],
            "session_alerts_expected": sorted(k for k, v in self.request_sessions.items() if v == "broken"),
            "session_alerts": self.session_alerts,
            "delivery_errors": self.delivery_errors,
        }


class Readers:
    """read_committed readers of the alert and dead-letter topics, printing what arrives."""

    def __init__(self, bootstrap: str, names: Names, tally: Tally, console: Console) -> None:
        self.names = names
        self.tally = tally
        self.console = console
        self.last_arrival = time.monotonic()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",  # required by librdkafka; never committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.consumer.assign(
            [
                TopicPartition(names.alerts, 0, OFFSET_BEGINNING),
                TopicPartition(names.dead_letter, 0, OFFSET_BEGINNING),
            ]
        )

    def poll(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            message = self.consumer.poll(max(0.0, min(0.1, deadline - time.monotonic())))
            if message is not None:
                self._show(message)
            if time.monotonic() >= deadline:
                return

    def _show(self, message: Message) -> None:
        if message.error():
            self.console.info(f"reader: {message.error()}")
            return
        self.last_arrival = time.monotonic()
        if message.topic() == self.names.alerts:
            alert = json.loads(message.value() or b"null")
            offset = int(alert["source"]["offset"])
            rate = alert.get("rate")
            if rate is not None:
                self._rate(alert, rate, offset)
                return
            if alert.get("session") is not None:
                self._session(alert, alert["session"], offset)
                return
            record = self.tally.by_offset.get(offset)
            text = str(alert["text"])
            if alert.get("kind") == "summary":
                counted = int(alert["group"]["suppressed"])
                self.tally.summaries.append(counted)
                cooldown = float(alert["group"]["cooldown_seconds"])
                kind, text = (
                    "SUMMARY",
                    f"{counted} more of this pattern within {cooldown:g} s of its alert: {text}",
                )
            else:
                self.tally.alerts[offset] = float(alert["score"])
                self.tally.alerted_patterns.add(str(alert.get("pattern", {}).get("template", "")))
                kind = "ALERT"
            self.console.record(
                kind=kind, score=float(alert["score"]), offset=offset,
                truth=_truth(record, "anomaly"), service=record.service if record else "?", text=text,
            )  # fmt: skip
        else:
            headers = _headers(message)
            offset = int(headers.get("dlq.source.offset", "-1"))
            reason = headers.get("dlq.reason", "?")
            self.tally.dead_letters[offset] = reason
            record = self.tally.by_offset.get(offset)
            raw = (message.value() or b"").decode("utf-8", "replace")
            self.console.record(
                kind="DLQ", score=None, offset=offset, truth=_truth(record, "malformed"),
                service=reason, text=raw,
            )  # fmt: skip

    def _rate(self, alert: dict[str, Any], rate: dict[str, Any], offset: int) -> None:
        """A spike, a silence, or the summary of a window of them (from the history)."""
        template = str(alert["pattern"]["template"])
        if alert.get("kind") == "summary":
            counted = int(alert["group"]["suppressed"])
            self.tally.summaries.append(counted)
            kind, text = "SUMMARY", f"{counted} more {rate['kind']}(s) within the cooldown: {template}"
        else:
            self.tally.rate_alerts.setdefault(str(rate["kind"]), []).append(template)
            kind = str(rate["kind"]).upper()
            bucket = float(rate["bucket_seconds"])
            if rate["kind"] == "spike":
                text = (
                    f"{rate['observed']} in {bucket:g} s, {float(rate['expected']):.1f} expected: {template}"
                )
            else:
                text = (
                    f"none for {int(rate['buckets']) * bucket:g} s, {float(rate['expected']):.1f} "
                    f"expected: {template}"
                )
        self.console.record(
            kind=kind, score=float(alert["score"]), offset=offset, truth="history",
            service=str(alert.get("fields", {}).get("service", "-")), text=text,
        )  # fmt: skip

    def _session(self, alert: dict[str, Any], session: dict[str, Any], offset: int) -> None:
        """A request session that went wrong, or the summary of a window of them."""
        key = str(session["key"])
        text = str(alert["text"])
        if alert.get("kind") == "summary":
            counted = int(alert["group"]["suppressed"])
            self.tally.summaries.append(counted)
            kind, text = "SUMMARY", f"{counted} more session(s) failing alike within the cooldown: {text}"
        else:
            kind = "SESSION"
            self.tally.session_alerts.append(
                {
                    "key": key,
                    "score": float(alert["score"]),
                    "events": int(session["events"]),
                    "reason": str(session["reason"]),
                    "text": text,
                }
            )
            text = _session_line(session, text)
        label = self.tally.request_sessions.get(key)
        self.console.record(
            kind=kind, score=float(alert["score"]), offset=offset,
            truth="?" if label is None else label if label == "broken" else f"{label} (!)",
            service=self.tally.request_service, text=text,
        )  # fmt: skip

    def close(self) -> None:
        self.consumer.close()


def _headers(message: Message) -> dict[str, str]:
    """A record's headers as text; the last value of a repeated name wins (as dlq.* headers specify)."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name: value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
        for name, value in pairs
    }


def _session_line(session: dict[str, Any], text: str) -> str:
    """A session alert in one short line (the alert's own ``text`` says the same at more length):
    which request, how it closed, and the step the model expected."""
    steps = session.get("unexpected") or []
    if not steps:
        return text
    first = steps[0]
    expected = first.get("expected_template", first.get("expected"))
    head = f"{session['key']}: {session['events']} events, closed ({session['reason']})"
    if first.get("kind") == "end":
        return f"{head}; {expected!r} expected after step {first['position']}"
    shown = first.get("template", first.get("pattern"))
    return f"{head}; step {int(first['position']) + 1} was {shown!r}, {expected!r} expected"


def _message(record: StreamRecord) -> str:
    value = record.value
    return str(value.get("message", "")) if isinstance(value, dict) else value


def _truth(record: StreamRecord | None, expected: str) -> str:
    """The EXPECTED column: what the replayed event was, flagged when it was not ``expected``."""
    if record is None:
        return "?"
    return record.label if record.label == expected else f"{record.label} (!)"


def committed_all(bootstrap: str, names: Names) -> bool:
    """Whether the agent's group has committed every input partition's end offset (everything
    processed)."""
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": names.group_id, "enable.auto.commit": False}
    )
    try:
        partitions = [TopicPartition(names.input, p) for p in range(INPUT_PARTITIONS)]
        committed = probe.committed(partitions, timeout=10)
        for tp, done in zip(partitions, committed, strict=True):
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            if high > low and done.offset < high:
                return False
        return True
    except KafkaException:
        return False
    finally:
        probe.close()


def replay(
    producer: Producer,
    records: list[StreamRecord],
    *,
    topic: str,
    rate: float,
    tally: Tally,
    readers: Readers,
    stop: StopFlag,
    agent: Agent,
) -> None:
    """Sends the records at ``rate`` events/s (0 = as fast as possible), reading alerts in between;
    stops early on Ctrl-C or when the agent has died (the caller reports that)."""

    def delivered(index: int) -> Any:
        def callback(err: KafkaError | None, message: Message) -> None:
            if err is not None:
                tally.delivery_errors.append(f"record {index}: {err}")
            else:
                tally.by_offset[message.offset() or 0] = records[index]

        return callback

    started = time.monotonic()
    for index, record in enumerate(records):
        if stop.is_set() or agent.process.poll() is not None:
            break
        if rate > 0:
            due = started + index / rate
            while time.monotonic() < due and not stop.is_set():
                producer.poll(0)
                readers.poll(min(0.05, max(0.0, due - time.monotonic())))
        producer.produce(
            topic,
            value=record.payload(datetime.now(UTC)),
            key=f"demo-{index}",
            partition=STREAM_PARTITION,
            on_delivery=delivered(index),
        )
        tally.sent[record.label] += 1
        producer.poll(0)
    producer.flush(30)


def replay_history(producer: Producer, history: list[HistoryRecord], *, topic: str, tally: Tally) -> datetime:
    """Sends the history at once to its own partition, each event with its own time as the Kafka
    timestamp: it ends a minute before now, so its event time runs 45 minutes in a few seconds.
    Returns when it started."""
    span = max(r.at_ms for r in history)
    # On a minute: the history's minutes are the rates' 60 s buckets (the stampede is one bucket).
    base = (
        round((datetime.now(UTC) - timedelta(milliseconds=span + 60_000)).timestamp() * 1000)
        // 60_000
        * 60_000
    )
    start = datetime.fromtimestamp(base / 1000, UTC)
    for index, record in enumerate(history):
        producer.produce(
            topic,
            value=record.payload(),
            key=f"history-{index}",
            partition=HISTORY_PARTITION,
            timestamp=base + record.at_ms,
        )
        tally.history_sent += 1
        if index % 100 == 0:
            producer.poll(0)
    producer.flush(30)
    return start


def replay_requests(producer: Producer, requests: list[HistoryRecord], *, topic: str, tally: Tally) -> None:
    """Sends the request sessions at once to their own partition with their own times as Kafka
    timestamps (ending half a minute before now). Their event time passes the broken session's
    last line + the gap within the file, so the agent closes that session at a known record."""
    span = max(r.at_ms for r in requests)
    base = round((datetime.now(UTC) - timedelta(milliseconds=span + 30_000)).timestamp() * 1000)
    for index, record in enumerate(requests):
        producer.produce(
            topic,
            value=record.payload(),
            key=f"request-{index}",
            partition=REQUEST_PARTITION,
            timestamp=base + record.at_ms,
        )
        tally.requests_sent += 1
    producer.flush(30)


# --- the command --------------------------------------------------------------------------------


def _child_env(
    broker: Broker, names: Names, suffix: str, bundle: Path, ports: tuple[int, int]
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            BOOTSTRAP_ENV: broker.bootstrap,
            "ANOMALY_AGENT_MODEL__BUNDLE": str(bundle),
            "ANOMALY_AGENT_METRICS__PORT": str(ports[0]),
            "ANOMALY_AGENT_HEALTH__PORT": str(ports[1]),
        }
    )
    if suffix:
        env.update(
            {
                "ANOMALY_AGENT_TOPICS__INPUT": json.dumps([names.input]),
                "ANOMALY_AGENT_TOPICS__ALERTS": names.alerts,
                "ANOMALY_AGENT_TOPICS__DEAD_LETTER": names.dead_letter,
                "ANOMALY_AGENT_KAFKA__GROUP_ID": names.group_id,
            }
        )
    return env


def _ports(settings: Settings) -> tuple[int, int]:
    """The configured metrics/health ports, or free ones when something else holds them."""
    metrics, health = settings.metrics.port, settings.health.port
    if not _port_available(settings.metrics.host, metrics):
        metrics = _free_port(settings.metrics.host)
    if not _port_available(settings.health.host, health) or health == metrics:
        health = _free_port(settings.health.host)
    return metrics, health


def run_demo(args: argparse.Namespace, console: Console, stop: StopFlag) -> dict[str, Any]:
    """The demo proper; returns the summary. Everything it starts is stopped before it returns."""
    if args.events is not None and args.events < 1:
        raise DemoError(f"--events must be at least 1, got {args.events}")
    if args.rate < 0:
        raise DemoError(f"--rate must be 0 (as fast as possible) or positive, got {args.rate:g}")
    t0 = time.monotonic()
    state_dir: Path = (args.state_dir or DEFAULT_STATE_DIR).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(CONFIG_FILE)
    records = load_stream(STREAM_FILE, args.events)
    summary: dict[str, Any] = {"state_dir": str(state_dir)}

    console.line("kafka-anomaly-agent demo — Ctrl-C stops everything")
    t = time.monotonic()
    broker = Broker.acquire(state_dir / "kafka")
    summary["bootstrap"] = broker.bootstrap
    how = (
        "external (ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS)"
        if broker.state_dir is None
        else (
            f"started, state in {broker.state_dir}"
            if broker.owned
            else f"already running, state in {broker.state_dir}"
        )
    )
    console.step(1, "Kafka broker", f"{broker.bootstrap} ({how}, {time.monotonic() - t:.1f}s)")
    agent: Agent | None = None
    readers: Readers | None = None
    producer: Producer | None = None
    tally = Tally()
    try:
        suffix = "" if broker.fresh else f"-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        names = Names.for_run(settings, suffix)
        create_topics(broker.bootstrap, names)
        summary["topics"] = {"input": names.input, "alerts": names.alerts, "dead_letter": names.dead_letter}
        console.step(2, "topics", f"{names.input} → agent → {names.alerts}, {names.dead_letter}")

        bundle = state_dir / "bundle"
        ports = _ports(settings)
        env = _child_env(broker, names, suffix, bundle, ports)
        t = time.monotonic()
        console.step(3, "model bundle", f"{DETECTOR} detector on {TRAIN_FILE.relative_to(REPO_ROOT)} ...")
        try:
            how = ensure_bundle(bundle, env, train_flags(settings))
        except DemoError:
            if stop.is_set():  # Ctrl-C reached the training process too; that is not a failure
                return summary
            raise
        console.info(f"{bundle}: {how} in {time.monotonic() - t:.1f}s")
        preparation = json.loads((bundle / "text_preparation.json").read_text())
        tally.prepare = TextPreparation.from_dict(preparation).prepare
        if stop.is_set():
            return summary

        metrics_url = f"http://{settings.metrics.host}:{ports[0]}/metrics"
        base = f"http://{settings.health.host}:{ports[1]}"
        summary.update(metrics_url=metrics_url, healthz_url=f"{base}/healthz", readyz_url=f"{base}/readyz")
        t = time.monotonic()
        agent = Agent.start(env, state_dir / "agent.log")
        console.step(
            4,
            "agent",
            f"anomaly-agent run --config {CONFIG_FILE.relative_to(REPO_ROOT)} (pid {agent.process.pid})",
        )
        agent.wait_ready(f"{base}/readyz", stop)
        if stop.is_set():
            return summary
        console.info(f"ready in {time.monotonic() - t:.1f}s; log {agent.log_path}")
        console.info(f"metrics  {metrics_url}")
        console.info(f"health   {base}/healthz   {base}/readyz")
        summary["setup_seconds"] = round(time.monotonic() - t0, 1)

        readers = Readers(broker.bootstrap, names, tally, console)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        labels = Counter(r.label for r in records)
        pace = f"{args.rate:g} events/s" if args.rate > 0 else "full speed"
        history = load_history(HISTORY_FILE)
        requests = load_history(REQUESTS_FILE)
        if settings.sessions.key_pattern is not None:
            tally.request_sessions = session_keys(requests, settings.sessions.key_pattern)
        tally.request_service = str(requests[0].value.get("service", "-")) if requests else "-"
        console.step(
            5, "replay",
            f"{len(history)} events of history (45 minutes of platform logs: a cache stampede, a "
            f"heartbeat that stops) → {names.input}[{HISTORY_PARTITION}], "
            f"{len(tally.request_sessions)} request sessions (one never says done) → "
            f"{names.input}[{REQUEST_PARTITION}], then {len(records)} events at "
            f"{pace}: {labels['normal']} normal, {labels['anomaly']} anomalous, {labels['malformed']} "
            f"malformed → {names.input}[{STREAM_PARTITION}]",
        )  # fmt: skip
        console.header()
        t = time.monotonic()
        replay_history(producer, history, topic=names.input, tally=tally)
        replay_requests(producer, requests, topic=names.input, tally=tally)
        replay(
            producer,
            records,
            topic=names.input,
            rate=args.rate,
            tally=tally,
            readers=readers,
            stop=stop,
            agent=agent,
        )
        summary["replay_seconds"] = round(time.monotonic() - t, 1)
        summary["all_processed"] = _wait_processed(
            broker, names, readers, stop, args.exit_after_replay, console, agent, metrics_url
        )
        summary["agent_counters"] = scrape(metrics_url)
    finally:
        if agent is not None:
            console.line()
            if agent.process.poll() is None:
                console.info("stopping the agent (SIGTERM: finish the batch, commit, exit)")
            summary["agent_exit_code"] = agent.stop(settings.lifecycle.shutdown_grace_seconds)
        if readers is not None:
            readers.poll(1.0)  # the agent's last transaction may have committed alerts
            readers.close()
        if producer is not None:
            producer.flush(5)
            producer = None  # destroyed now, before the broker stops, not at garbage collection
        summary["broker"] = broker.release()
        summary.update(tally.summary())
        summary["elapsed_seconds"] = round(time.monotonic() - t0, 1)
        (state_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _wait_processed(
    broker: Broker,
    names: Names,
    readers: Readers,
    stop: StopFlag,
    exit_after_replay: bool,
    console: Console,
    agent: Agent,
    metrics_url: str,
) -> bool:
    """Reads alerts until the agent has committed every replayed offset (then returns with
    ``exit_after_replay`` once every grouping window that counted events has published its
    summary, else keeps reading until Ctrl-C); returns early if the agent dies."""
    done = False
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    next_check = 0.0
    while not stop.is_set():
        readers.poll(0.2)
        if agent.process.poll() is not None:
            console.info(f"the agent exited with {agent.process.returncode}; last lines of {agent.log_path}:")
            console.line(_tail(agent.log_path, 10))
            return done
        now = time.monotonic()
        if not done and now >= next_check:
            next_check = now + 0.5
            if committed_all(broker.bootstrap, names):
                done = True
                readers.last_arrival = max(readers.last_arrival, now)
                if not exit_after_replay:
                    console.info(
                        "every replayed event is processed; the agent keeps running — Ctrl-C to stop"
                    )
        if exit_after_replay:
            if (
                done
                and now - readers.last_arrival >= SETTLE_S
                and _windows_closed(metrics_url, readers.tally)
            ):
                return True
            if not done and now >= deadline:
                console.info(
                    f"the agent had not committed every event {DRAIN_TIMEOUT_S:.0f}s after the replay"
                )
                return False
    return done


def _windows_closed(metrics_url: str, tally: Tally) -> bool:
    """Whether every event the agent counted in a grouping window is in a summary read back."""
    return scrape(metrics_url).get("anomaly_agent_alerts_suppressed_total", 0.0) <= sum(tally.summaries)


def print_summary(console: Console, summary: Mapping[str, Any]) -> None:
    sent = summary.get("events_sent_by_label", {})
    counters = summary.get("agent_counters", {})
    console.line()
    console.line("summary")
    console.info(
        f"events sent        {summary.get('events_sent', 0)} "
        f"({sent.get('normal', 0)} normal, {sent.get('anomaly', 0)} anomalous, "
        f"{sent.get('malformed', 0)} malformed)"
    )
    console.info(
        f"alerts received    {summary.get('alerts_received', 0)} "
        f"({summary.get('anomalies_alerted', 0)} of {sent.get('anomaly', 0)} anomalies, "
        f"{len(summary.get('false_positive_offsets', []))} on normal events)"
    )
    console.info(
        f"grouped            {summary.get('anomalies_grouped', 0)} more anomalies counted under their "
        f"pattern's alert; {summary.get('summaries_received', 0)} summaries carried "
        f"{summary.get('events_in_summaries', 0)} events (one alert per pattern and cooldown)"
    )
    got = summary.get("rate_alerts_received", {})
    console.info(
        f"rate alerts        {got.get('spike', 0)} spike, {got.get('silence', 0)} silence from "
        f"{summary.get('history_events_sent', 0)} events of history (expected "
        + ", ".join(f"{n} {k}" for k, n in EXPECTED_RATE_ALERTS.items())
        + ")"
    )
    expected = summary.get("session_alerts_expected", [])
    alerted = ", ".join(
        f"{a['key']} closed ({a['reason']}) after {a['events']} events"
        for a in summary.get("session_alerts", [])
    )
    console.info(
        f"session alerts     {summary.get('session_alerts_received', 0)}"
        + (f" ({alerted})" if alerted else "")
        + f" from {summary.get('request_sessions_sent', 0)} request sessions (expected "
        + f"{len(expected)}: {', '.join(expected) or '-'}, the one without its done)"
    )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("dead_letter_reasons", {}).items()))
    console.info(
        f"dead letters       {summary.get('dead_letters_received', 0)}" + (f" ({reasons})" if reasons else "")
    )
    if counters:
        console.info(
            "agent's counters   "
            + ", ".join(
                f"{name.removeprefix('anomaly_agent_')} {value:g}"
                for name, value in sorted(counters.items())
                if name.startswith("anomaly_agent_")
                and any(
                    w in name
                    for w in (
                        "consumed",
                        "processed",
                        "dead_lettered",
                        "alerts_published",
                        "suppressed",
                        "session_alerts",
                    )
                )
            )
        )
    console.info(f"agent exit code    {summary.get('agent_exit_code', '-')}")
    console.info(f"broker             {summary.get('bootstrap', '-')}: {summary.get('broker', '-')}")
    console.info(
        f"took               {summary.get('elapsed_seconds', 0)}s "
        f"(set-up {summary.get('setup_seconds', '-')}s)"
    )
    console.info(f"summary written to {Path(summary.get('state_dir', '.')) / 'summary.json'}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Entry point of ``anomaly-agent demo``; 0 when the agent exited cleanly (and, with
    ``--exit-after-replay``, every replayed event was processed)."""
    console = Console()
    stop = StopFlag()
    try:
        with stop.installed():
            summary = run_demo(args, console, stop)
    except (DemoError, ConfigError) as exc:
        print(f"anomaly-agent demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("anomaly-agent demo: interrupted twice; children may still be stopping", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(console, summary)
    if "agent_exit_code" not in summary:
        return EXIT_INTERRUPTED if stop.is_set() else 1
    if summary["agent_exit_code"] != 0:
        return 1
    if args.exit_after_replay and not summary.get("all_processed"):
        return 1
    return 0
