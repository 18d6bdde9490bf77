"""Kafka test fixtures: one real broker per test session, plus unique topics and consumer groups.

`kafka_bootstrap` (session) resolves a broker in this order, first match wins:

1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment: an existing broker or cluster (CI service,
   developer's own). Nothing is started or stopped.
2. testcontainers' ``KafkaContainer`` (KRaft) when a Docker daemon answers a ping within two
   seconds.
3. The local JVM broker of ``deploy/local/kafka.sh`` in an isolated temporary state dir on a free
   port: one for the whole run, shared by every pytest-xdist worker (``shared_resources``),
   stopped when the run ends (and by the script's watchdog if the run's process dies first).

Whatever the source, the fixture checks that a client can fetch metadata before any test runs,
so an unreachable broker fails once with a clear message instead of as many test time-outs.

Kafka tests use these fixtures rather than fakes: the team rule is that nothing claiming Kafka
behaviour may be tested against a mock.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the typed home of admin.NewTopic (re-exported untyped)
from shared_resources import Stop, shared

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"

# The first local start on a machine downloads the Kafka jars through Maven; later starts take
# seconds. The limit is generous so that the cold start does not fail a slow CI machine.
BROKER_START_TIMEOUT_S = 600.0
BROKER_STOP_TIMEOUT_S = 60.0
METADATA_TIMEOUT_S = 30.0
TOPIC_READY_TIMEOUT_S = 30.0


class TopicFactory(Protocol):
    """Creates a topic and returns its name once every partition has a leader."""

    def __call__(
        self, partitions: int = 1, name: str | None = None, config: dict[str, str] | None = None
    ) -> str: ...


class GroupFactory(Protocol):
    """Returns a consumer group id that no other test uses."""

    def __call__(self) -> str: ...


def _unique_name(prefix: str, test_name: str) -> str:
    """`<prefix>-<test name>-<random>`, restricted to Kafka's legal topic/group characters.

    The test name makes leftovers on a shared broker traceable; the random part keeps names unique
    across tests, parametrisations and re-runs against the same broker.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", test_name).strip("-.")[:80]
    return f"{prefix}-{readable}-{uuid.uuid4().hex[:10]}"


def _docker_answers() -> bool:
    """True when a Docker daemon answers a ping within two seconds (never raises)."""
    try:
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (DockerException, OSError):
        return False


def kafka_sh_env() -> dict[str, str]:
    """Environment for deploy/local/kafka.sh: this process's, without the knobs that would point
    it at another port or state dir, and with COLUMNS wide, because the script recognises its
    broker with ``ps -o args=``, which truncates to $COLUMNS (80 in subprocesses of pytest)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_PORT", "ANOMALY_AGENT_STATE_DIR")}
    return env | {"COLUMNS": "4096"}


def kafka_sh(*args: str, timeout: float = BROKER_START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run deploy/local/kafka.sh with ``args`` (never raises for its exit code)."""
    return subprocess.run(
        [str(KAFKA_SH), *args],
        env=kafka_sh_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_local_broker(state_dir: Path, owner_pid: int, *options: str) -> tuple[str, Stop]:
    """Start deploy/local/kafka.sh in ``state_dir`` (with start ``options`` such as ``--secure``),
    stopped by its watchdog when ``owner_pid`` ends; its PLAINTEXT bootstrap address and how to
    stop it."""
    started = kafka_sh("start", "--dir", str(state_dir), "--owner-pid", str(owner_pid), *options)
    if started.returncode != 0:
        pytest.fail(
            f"local Kafka broker did not start (exit {started.returncode}):\n{started.stderr}", pytrace=False
        )
    lines = started.stdout.split()
    if not lines:
        pytest.fail(f"kafka.sh start printed no bootstrap address:\n{started.stderr}", pytrace=False)
    return lines[-1], Stop([str(KAFKA_SH), "stop", "--dir", str(state_dir)], kafka_sh_env())


@contextmanager
def local_broker(state_dir: Path, *options: str) -> Iterator[str]:
    """A broker of the caller's own (a test that stops or freezes it): started in ``state_dir``,
    stopped after; the script's watchdog stops it too if this process dies first."""
    bootstrap, stop = start_local_broker(state_dir, os.getpid(), *options)
    try:
        yield bootstrap
    finally:
        stopped = subprocess.run(
            stop.command, env=stop.env, capture_output=True, text=True, timeout=BROKER_STOP_TIMEOUT_S
        )
        if stopped.returncode != 0:
            raise RuntimeError(f"kafka.sh stop failed (exit {stopped.returncode}):\n{stopped.stderr}")


@contextmanager
def _container_broker() -> Iterator[str]:
    """A KRaft KafkaContainer configured like the local broker (transactions on one node)."""
    from testcontainers.community.kafka import KafkaContainer

    container = (
        KafkaContainer()
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    with container as kafka:
        yield str(kafka.get_bootstrap_server())


def _check_reachable(bootstrap: str, source: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.list_topics(timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {bootstrap} ({source}) answers no metadata request: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    """Bootstrap address ("host:port") of a real broker for this session; see the module doc."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        _check_reachable(configured, "KAFKA_BOOTSTRAP_SERVERS")
        yield configured
        return
    if _docker_answers():  # a container per worker: its lifetime is bound to the process that made it
        with _container_broker() as bootstrap:
            _check_reachable(bootstrap, "testcontainers")
            yield bootstrap
        return
    bootstrap = shared(pytestconfig, "kafka", start_local_broker)
    _check_reachable(bootstrap, "deploy/local/kafka.sh")
    yield bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the session broker (topic creation, offsets, metadata checks)."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def wait_for_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    """Blocks until metadata lists `topic` with `partitions` partitions that all have a leader.

    CreateTopics returns before every broker serves the new partitions; producing right away can
    hit UNKNOWN_TOPIC_OR_PARTITION, so tests start only once metadata agrees.
    """
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    while True:
        described = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if (
            described is not None
            and described.error is None
            and len(described.partitions) == partitions
            and all(p.leader >= 0 for p in described.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT_S}s: {described}")
        time.sleep(0.05)


@pytest.fixture
def make_topic(kafka_admin: AdminClient, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Factory for fresh topics (broker-default replication factor, optional topic configs such
    as ``max.message.bytes``), deleted after the test.

    Deletion keeps a shared broker (KAFKA_BOOTSTRAP_SERVERS) tidy; a broker that refuses it
    produces a warning, not a test error, because the test itself already ran.
    """
    created: list[str] = []

    def create(partitions: int = 1, name: str | None = None, config: dict[str, str] | None = None) -> str:
        topic = name or _unique_name("t", request.node.name)
        futures = kafka_admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, config=config or {})],
            operation_timeout=TOPIC_READY_TIMEOUT_S,
        )
        futures[topic].result(timeout=TOPIC_READY_TIMEOUT_S)
        created.append(topic)
        wait_for_topic(kafka_admin, topic, partitions)
        return topic

    yield create
    if created:
        for topic, future in kafka_admin.delete_topics(created, operation_timeout=30).items():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                warnings.warn(f"could not delete test topic {topic}: {exc}", stacklevel=1)


@pytest.fixture
def make_group(request: pytest.FixtureRequest) -> GroupFactory:
    """Factory for consumer group ids unique to this test (no committed offsets from elsewhere)."""

    def create() -> str:
        return _unique_name("g", request.node.name)

    return create
