"""Runs the real agent for the ops tests: a bundle trained by ``anomaly-agent train``, a TOML
config, ``anomaly-agent run`` as a subprocess on the real broker, and traffic that exercises every
path (normal events, anomalies, and each kind of bad input that goes to the dead-letter topic)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from agent_helpers import clean_env
from confluent_kafka import Producer

VENV_BIN = Path(sys.executable).parent
AGENT = str(VENV_BIN / "anomaly-agent")
NORMAL_LABELS = ("joy", "sadness", "anger")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def agent_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any agent override (the TOML is the whole config),
    offline for the hub, plus ``extra``."""
    return {**clean_env(), **extra}


def train_bundle(datasets_dir: Path, embedder_dir: Path, out: Path, *, records: int = 400) -> Path:
    """A knn bundle on emotion texts labelled joy/sadness/anger, via the real CLI."""
    source = datasets_dir / "emotion" / "train.jsonl"
    sample = out.parent / "train-sample.jsonl"
    lines = [line for line in source.read_text().splitlines() if line.strip()][:records]
    sample.write_text("\n".join(lines) + "\n")
    cmd = [
        AGENT, "train", "--input", str(sample), "--text-field", "text", "--label-field", "label",
        "--normal-labels", ",".join(NORMAL_LABELS), "--detector", "knn", "--target-fpr", "0.05",
        "--embedder", str(embedder_dir), "--out", str(out), "--seed", "7",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=agent_env(), timeout=600)
    assert proc.returncode == 0, f"anomaly-agent train failed:\n{proc.stdout}\n{proc.stderr}"
    assert (out / "manifest.json").is_file()
    return out


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    metrics_port: int
    health_port: int
    input_topic: str
    alerts_topic: str
    dead_letter_topic: str

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def health_url(self, endpoint: str) -> str:
        return f"http://127.0.0.1:{self.health_port}/{endpoint}"


def write_config(
    directory: Path,
    *,
    bootstrap: str,
    group: str,
    bundle: Path,
    input_topic: str,
    alerts_topic: str,
    dead_letter_topic: str,
    delivery: str = "exactly_once",
) -> AgentConfig:
    metrics_port, health_port = free_port(), free_port()
    path = directory / "agent.toml"
    path.write_text(
        f"""
delivery = "{delivery}"
instance_id = "ops-test"
log_level = "INFO"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
librdkafka = {{ "statistics.interval.ms" = 1000 }}

[topics]
input = ["{input_topic}"]
alerts = "{alerts_topic}"
dead_letter = "{dead_letter_topic}"

[model]
bundle = "{bundle}"
watch = false
intra_op_threads = 1

[events]
format = "json"
text_field = "text"
max_bytes = 4096

[batch]
max_size = 16
max_wait_ms = 100

[metrics]
host = "127.0.0.1"
port = {metrics_port}

[health]
host = "127.0.0.1"
port = {health_port}
stall_seconds = 30

[lifecycle]
shutdown_grace_seconds = 20
"""
    )
    return AgentConfig(path, metrics_port, health_port, input_topic, alerts_topic, dead_letter_topic)


@contextmanager
def running_agent(
    config: AgentConfig, log_path: Path, *, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``anomaly-agent run --config`` (after ``prefix``, e.g. a wrapper) until the block ends; then
    SIGTERM and wait. The agent's log goes to ``log_path`` (shown by failing assertions)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*prefix, AGENT, "run", "--config", str(config.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else agent_env(),
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def wait_until_ready(
    config: AgentConfig, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(config.health_url("readyz"), timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"agent not ready within {timeout}s:\n{log_path.read_text()}")


def traffic(datasets_dir: Path, count: int, seed: int) -> list[bytes]:
    """``count`` payloads: normal emotion texts, anomalies (other emotions, SMS spam), and about
    one in ten bad records of every dead-letter kind."""
    rng = random.Random(seed)
    emotion = [
        json.loads(line) for line in (datasets_dir / "emotion" / "validation.jsonl").read_text().splitlines()
    ]
    normal = [r["text"] for r in emotion if r["label"] in NORMAL_LABELS]
    unusual = [r["text"] for r in emotion if r["label"] not in NORMAL_LABELS]
    spam = [
        line.split("\t", 1)[1]
        for line in (datasets_dir / "sms_spam" / "SMSSpamCollection")
        .read_text(errors="replace")
        .splitlines()[1:]
        if line.startswith("spam\t")
    ]
    bad: list[bytes] = [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        json.dumps({"message": "no text field"}).encode(),
        json.dumps({"text": "x" * 5000}).encode(),
    ]
    out: list[bytes] = []
    for i in range(count):
        roll = rng.random()
        if i % 10 == 9:
            out.append(bad[(i // 10) % len(bad)])
        elif roll < 0.6:
            out.append(json.dumps({"text": rng.choice(normal)}).encode())
        elif roll < 0.8:
            out.append(json.dumps({"text": rng.choice(unusual)}).encode())
        else:
            out.append(json.dumps({"text": rng.choice(spam)}).encode())
    return out


def produce(bootstrap: str, topic: str, payloads: Sequence[bytes], *, partitions: int = 2) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, value in enumerate(payloads):
        producer.produce(topic, value=value, key=f"k{i}".encode(), partition=i % partitions)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered to {topic}"
