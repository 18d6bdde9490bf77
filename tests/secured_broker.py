"""A secured broker for the tests: ``deploy/local/kafka.sh start --secure`` in a temporary state dir.

The broker has two client listeners. SASL_SSL (SCRAM-SHA-512, TLS with the CA the script made, ACLs
enforced with nothing allowed unless an ACL says so) is what the agent under test connects to, as
user ``agent``, with nothing but the ACLs a test grants. PLAINTEXT is the tests' admin door: its
anonymous principal is a super user, so topic creation, ACL changes and reading what the agent
wrote (``agent_helpers.read_committed``) work through it without credentials. Only a test broker
has such a door; see docs/local-broker.md.

The ``secured_broker`` fixture is session-scoped: the broker starts once per run, shared by every
pytest-xdist worker (``shared_resources``; a few seconds once the jars are cached), and every test
works on topics, groups and ACLs of its own names. It is a broker of its own, never the session's
``kafka_bootstrap`` (which may be an external cluster without SASL), and it is stopped when the run
ends, or by the script's watchdog if the run's process dies first.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_fixtures import METADATA_TIMEOUT_S, start_local_broker
from shared_resources import Stop, shared

SASL_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SecuredBroker:
    """Where the secured broker listens and the credentials kafka.sh made for it.

    ``plaintext_bootstrap`` is for admin work only (super user, no authentication); clients under
    test use ``sasl_ssl_bootstrap`` with ``ca_location`` and one of the two SCRAM users.
    """

    plaintext_bootstrap: str
    sasl_ssl_bootstrap: str
    ca_location: Path
    agent_username: str
    agent_password: str = field(repr=False)  # kept out of pytest's failure reports
    admin_username: str
    admin_password: str = field(repr=False)
    state_dir: Path

    def sasl_config(self, username: str | None = None, password: str | None = None) -> dict[str, Any]:
        """librdkafka properties for the SASL_SSL listener (default: user ``agent``), verifying the
        broker's certificate against the CA and its host name (librdkafka's default)."""
        return {
            "bootstrap.servers": self.sasl_ssl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": username or self.agent_username,
            "sasl.password": password if password is not None else self.agent_password,
            "ssl.ca.location": str(self.ca_location),
        }

    def admin(self) -> AdminClient:
        """An AdminClient on the PLAINTEXT listener: a super user (topics, ACLs, offsets)."""
        return AdminClient({"bootstrap.servers": self.plaintext_bootstrap})


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        pytest.fail(f"kafka.sh start --secure did not leave {path}: {exc}", pytrace=False)


def _check_sasl_ssl(broker: SecuredBroker) -> None:
    """The agent user can authenticate and fetch metadata over TLS: otherwise every test would fail
    with a time-out instead of this one clear message."""
    admin = AdminClient(broker.sasl_config())
    try:
        admin.list_topics(timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        pytest.fail(
            f"the secured broker's SASL_SSL listener {broker.sasl_ssl_bootstrap} refuses user "
            f"{broker.agent_username}: {exc}; see {broker.state_dir}/kafka.log",
            pytrace=False,
        )


def _wait_for_group_coordinator(broker: SecuredBroker) -> None:
    """Block until the group coordinator answers. A fresh broker loads ``__consumer_offsets`` in
    the background and answers NOT_COORDINATOR meanwhile; helpers that read committed offsets
    (``agent_helpers.offsets``) do not retry, so a test that starts with one would fail."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.plaintext_bootstrap,
            "group.id": "secured-broker-warm-up",
            "enable.auto.commit": False,
        }
    )
    deadline = time.monotonic() + METADATA_TIMEOUT_S
    try:
        while True:
            try:
                consumer.committed([TopicPartition("secured-broker-warm-up", 0)], timeout=5)
                return
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"the secured broker's group coordinator is not ready: {exc}", pytrace=False)
                time.sleep(0.2)
    finally:
        consumer.close()


def _start(state: Path, owner_pid: int) -> tuple[dict[str, str], Stop]:
    plaintext, stop = start_local_broker(state, owner_pid, "--secure")
    broker = SecuredBroker(
        plaintext_bootstrap=plaintext,
        sasl_ssl_bootstrap=_read(state / "bootstrap-sasl-ssl"),
        ca_location=state / "tls" / "ca.pem",
        agent_username="agent",
        agent_password=_read(state / "sasl" / "agent.password"),
        admin_username="admin",
        admin_password=_read(state / "sasl" / "admin.password"),
        state_dir=state,
    )
    _check_sasl_ssl(broker)
    _wait_for_group_coordinator(broker)
    return {k: str(v) for k, v in asdict(broker).items()}, stop


@pytest.fixture(scope="session")
def secured_broker(pytestconfig: pytest.Config) -> SecuredBroker:
    """A broker of this run's own with a SASL_SSL listener and ACLs enforced; see the module doc."""
    fields = shared(pytestconfig, "secured-kafka", _start)
    return SecuredBroker(
        **fields | {"ca_location": Path(fields["ca_location"]), "state_dir": Path(fields["state_dir"])}
    )
