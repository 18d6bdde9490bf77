"""The agent as a process: systemd notifications, probes, SIGTERM drain, broker outage, refusals.

systemd's side is played by a real AF_UNIX datagram socket named by ``NOTIFY_SOCKET`` (what
systemd itself listens on), the broker outage by stopping a broker started for the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    NotifyListener,
    StreamProducer,
    agent_env,
    alert_sources,
    bgl_lines,
    cli,
    offsets,
    read_committed,
    wait_until,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kafka_fixtures import GroupFactory, TopicFactory, kafka_sh, local_broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


GRACE_S = 10.0
# Added to the grace period by deadlines that only a hung process misses.
HANG_S = 60.0


def test_notify_probes_and_sigterm_drain(
    kafka_bootstrap: str,
    make_topic: TopicFactory,
    make_group: GroupFactory,
    agent_bundle: Path,
    agent_processes: list[AgentProcess],
    datasets_dir: Path,
    notify: NotifyListener,
    tmp_path: Path,
) -> None:
    topics = AgentTopics(make_topic(2), make_topic(1), make_topic(1), make_group())
    normal, _ = bgl_lines(datasets_dir)
    records = [(None, json.dumps({"text": t}).encode(), None) for t in normal[-300:]]
    env = agent_env(
        kafka_bootstrap,
        topics,
        agent_bundle,
        instance_id="lifecycle",
        lifecycle__shutdown_grace_seconds=str(GRACE_S),
    )
    agent = AgentProcess(
        env, tmp_path / "agent.log", extra_env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    )
    agent_processes.append(agent)

    wait_until(lambda: notify.count("READY=1") == 1, timeout=90, what="READY=1")
    assert agent.probe("/healthz") == 200
    assert agent.probe("/readyz") == 200
    # WATCHDOG_USEC = 1 s: a ping every 0.5 s while the loop turns (idle polls included).
    wait_until(lambda: notify.count("WATCHDOG=1") >= 3, timeout=10, what="three WATCHDOG=1")

    stream = StreamProducer(kafka_bootstrap, topics.input, records, rate=100)
    wait_until(
        lambda: agent.metric("anomaly_agent_events_processed_total") >= 50, timeout=60, what="processing"
    )
    # Exit 0 is the behaviour: a drain that outlived the grace period would have been ended by
    # the grace timer with exit 1. The deadline only catches a hang (the timer itself failing).
    code = agent.terminate(timeout=GRACE_S + HANG_S)
    assert code == 0, agent.tail()
    assert notify.count("STOPPING=1") == 1
    assert notify.lines().index("READY=1") < notify.lines().index("STOPPING=1")
    assert "Traceback" not in agent.log()
    stream.join(timeout=30)

    # Whatever the stopped agent committed is complete: a second agent finishes the stream and
    # together they alerted on each event at most once.
    committed_before, _ = offsets(kafka_bootstrap, topics.group, topics.input)
    assert sum(max(0, o) for o in committed_before.values()) > 0
    second = AgentProcess(
        agent_env(kafka_bootstrap, topics, agent_bundle, instance_id="lifecycle"), tmp_path / "agent2.log"
    )
    agent_processes.append(second)
    wait_until(
        lambda: (
            offsets(kafka_bootstrap, topics.group, topics.input)[0]
            == offsets(kafka_bootstrap, topics.group, topics.input)[1]
        ),
        timeout=90,
        what="the second agent to catch up",
    )
    assert second.terminate() == 0
    sources = alert_sources(read_committed(kafka_bootstrap, topics.alerts))
    assert len(sources) == len(set(sources)), "an event was alerted twice across a graceful restart"


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A broker of this test's own (deploy/local/kafka.sh), so the test can take it away."""
    state = tmp_path_factory.mktemp("outage-kafka")
    with local_broker(state) as bootstrap:
        yield bootstrap, state


def _create_topics(bootstrap: str, topics: AgentTopics) -> None:
    """The three topics, one partition each; the admin client is dropped at once (it would retry
    a stopped broker for the rest of the session)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=1) for t in (topics.input, topics.alerts, topics.dead_letter)]
    ).values():
        future.result(timeout=30)


def test_broker_outage_unready_then_exit_69(
    own_broker: tuple[str, Path], agent_bundle: Path, agent_processes: list[AgentProcess], tmp_path: Path
) -> None:
    bootstrap, state = own_broker
    topics = AgentTopics("outage-in", "outage-alerts", "outage-dead", "outage-group")
    _create_topics(bootstrap, topics)
    limit = 8.0
    agent = AgentProcess(
        agent_env(
            bootstrap,
            topics,
            agent_bundle,
            instance_id="outage",
            lifecycle__broker_unavailable_exit_seconds=str(limit),
        ),
        tmp_path / "agent.log",
    )
    agent_processes.append(agent)
    agent.wait_ready()
    assert agent.probe("/readyz") == 200

    down_at = time.monotonic()  # the broker closes its connections as soon as it is told to stop
    stopped = kafka_sh("stop", "--dir", str(state), timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr, stopped.stderr
    wait_until(lambda: agent.probe("/readyz") == 503, timeout=15, what="/readyz to fail")
    assert agent.probe("/healthz") == 200, "a broker outage is not a reason to restart the agent"
    code = agent.wait_exit(timeout=limit + 30)
    took = time.monotonic() - down_at
    assert code == 69, agent.tail()
    assert took >= limit, f"exited {took:.1f} s after the outage began, before the {limit} s limit"
    assert "no Kafka broker reachable" in agent.log()


def test_unreachable_broker_at_start_exits_69(
    agent_bundle: Path, agent_processes: list[AgentProcess], tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        agent = AgentProcess(
            agent_env(
                f"127.0.0.1:{port}",
                AgentTopics("in", "alerts", "dead", "g"),
                agent_bundle,
                instance_id="nobroker",
                lifecycle__broker_unavailable_exit_seconds="4",
            ),
            tmp_path / "agent.log",
        )
        agent_processes.append(agent)
        wait_until(lambda: agent.probe("/readyz") == 503, timeout=60, what="/readyz answering 503")
        assert agent.wait_exit(timeout=60) == 69, agent.tail()


def _run_once(overrides: dict[str, str], tmp_path: Path, name: str) -> tuple[int, str]:
    agent = AgentProcess(overrides, tmp_path / f"{name}.log")
    code = agent.wait_exit(timeout=90)
    return code, agent.log()


def test_startup_refusals_say_what_to_fix(
    kafka_bootstrap: str, make_topic: TopicFactory, agent_bundle: Path, tmp_path: Path
) -> None:
    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), "refusals")
    base = agent_env(kafka_bootstrap, topics, agent_bundle, instance_id="refusals")

    code, log = _run_once(base | {"ANOMALY_AGENT_BATCH__MAX_SIZE": "0"}, tmp_path, "bad-config")
    assert code == 78 and "batch.max_size" in log and "Traceback" not in log, log

    missing = tmp_path / "no-bundle-here"
    code, log = _run_once(base | {"ANOMALY_AGENT_MODEL__BUNDLE": str(missing)}, tmp_path, "no-bundle")
    assert code == 78 and str(missing) in log and "Traceback" not in log, log

    tampered = tmp_path / "tampered"
    shutil.copytree(agent_bundle, tampered)
    (tampered / "text_preparation.json").write_text('{"fields": ["text"], "mask": false}\n')
    code, log = _run_once(base | {"ANOMALY_AGENT_MODEL__BUNDLE": str(tampered)}, tmp_path, "tampered")
    assert code == 65 and "text_preparation.json" in log and "Traceback" not in log, log

    code, log = _run_once(
        base | {"ANOMALY_AGENT_TOPICS__ALERTS": "no-such-alert-topic"}, tmp_path, "no-topic"
    )
    assert code == 78 and "no-such-alert-topic" in log and "Traceback" not in log, log

    result = cli("run", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 78 and "missing.toml" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_is_honoured_while_kafka_calls_are_blocked_by_a_frozen_broker(
    own_broker: tuple[str, Path], agent_bundle: Path, agent_processes: list[AgentProcess], tmp_path: Path
) -> None:
    """The broker's JVM is frozen (SIGSTOP): connections stay open and every request goes
    unanswered, so the agent's transactional calls block. SIGTERM must still end the process
    within the grace period (plus a small margin), with a documented exit code (0: stopped, the
    uncommitted batch given up; 1: the grace timer forced the exit) and no traceback."""
    bootstrap, state = own_broker
    topics = AgentTopics("frozen-in", "frozen-alerts", "frozen-dead", "frozen-group")
    _create_topics(bootstrap, topics)
    agent = AgentProcess(
        agent_env(
            bootstrap,
            topics,
            agent_bundle,
            instance_id="frozen",
            lifecycle__shutdown_grace_seconds=str(GRACE_S),
            lifecycle__broker_unavailable_exit_seconds="0",
        ),
        tmp_path / "agent.log",
    )
    agent_processes.append(agent)
    agent.wait_ready()
    records = [
        (None, json.dumps({"text": f"RAS KERNEL INFO event {i}"}).encode(), None) for i in range(2_000)
    ]
    stream = StreamProducer(bootstrap, topics.input, records, rate=50)
    wait_until(
        lambda: agent.metric("anomaly_agent_events_processed_total") >= 20, timeout=60, what="processing"
    )
    broker_pid = int((state / "kafka.pid").read_text())
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # the agent's next transaction is now blocked on the frozen broker
        code = agent.terminate(timeout=GRACE_S + HANG_S)  # a deadline against a hang only
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    # 0: drained (the Kafka waits gave up at 80 % of the grace); 1: the grace timer ended it.
    assert code in (0, 1), agent.tail()
    if code == 1:
        assert "longer than lifecycle.shutdown_grace_seconds" in agent.log(), agent.tail()
    assert "Traceback" not in agent.log()
    stream.join(timeout=60)
