"""The agent on a secured cluster: SASL_SSL with SCRAM-SHA-512, TLS verified against the cluster's
CA, and ACLs that grant user ``agent`` exactly what docs/operations.md lists, nothing more.

The broker is ``secured_broker`` (tests/secured_broker.py): ACLs enforced, no access without an
ACL. Topics, ACLs and the reading of results go through its PLAINTEXT listener (a super user);
the agent under test only ever sees the SASL_SSL listener, and its password only ever comes from
a file in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential``), never from its environment.

What is proven here:

- with the documented ACL set the agent runs exactly-once end to end (one alert per event that
  ``anomaly-agent score`` flags, malformed records dead-lettered, offsets committed to the end);
- the set is minimal: without any one of its required ACLs the agent stops with exit code 77
  (EX_NOPERM) and a message naming the resource and the missing operation, within a minute, with
  no traceback — instead of retrying forever or dying on an unexpected exception;
- DESCRIBE_CONFIGS on the output topics is optional (the agent then assumes the broker default
  ``max.message.bytes``), IDEMPOTENT_WRITE on the cluster is not needed, DESCRIBE is implied by
  READ/WRITE; at-least-once delivery needs no transactional-id ACL, and a PREFIXED one on
  ``<group_id>-`` covers instances whose ids are only known at run time;
- the password appears in no output: the agent's log (at DEBUG, librdkafka's security and
  configuration debug included), ``validate-config``, the metrics and health pages, kafka.sh,
  alerts and dead letters;
- a wrong password, or a CA the broker's certificate is not signed by, fails clearly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_helpers import (
    AgentProcess,
    AgentTopics,
    Record,
    agent_env,
    alert_sources,
    clean_env,
    cli,
    json_records,
    make_events,
    offline_anomalies,
    offsets,
    produce,
    read_committed,
    wait_caught_up,
)
from confluent_kafka import KafkaException, Message
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic
from kafka_fixtures import kafka_sh, wait_for_topic
from secured_broker import SASL_MECHANISM, SecuredBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# sysexits.h: what the agent exits with when the cluster refuses it an operation (EX_NOPERM).
EX_NOPERM = 77
# A missing permission must stop the agent within this long: it must not hang or retry forever.
REFUSAL_WITHIN_S = 60.0
CATCH_UP_TIMEOUT_S = 180.0
ACL_PROPAGATION_TIMEOUT_S = 30.0
PASSWORD_FILE = "ANOMALY_AGENT_KAFKA__SASL_PASSWORD"
INPUT_PARTITIONS = 2
# Records the agent cannot score; each must come out as exactly one dead letter.
MALFORMED: tuple[bytes, ...] = (
    b"{not json",
    json.dumps({"message": "no text field"}).encode(),
    b"\xff\xfe\x00",
)


# ----------------------------------------------------------------------------- names and ACLs


@dataclass(frozen=True)
class Names:
    """One test's topics, group and instance. The names hold no ACL operation word (read, write,
    describe...), so a log line naming the operation cannot pass for it by naming the resource."""

    input: str
    alerts: str
    dead_letter: str
    group: str
    instance_id: str

    @classmethod
    def fresh(cls) -> Names:
        token = uuid.uuid4().hex[:10]
        return cls(
            input=f"sec-{token}-events",
            alerts=f"sec-{token}-alerts",
            dead_letter=f"sec-{token}-dlq",
            group=f"sec-{token}-group",
            instance_id=f"sec-{token}-instance",
        )

    @property
    def transactional_id(self) -> str:
        """The exactly-once producer's ``transactional.id`` (agent.kafka.clients.transactional_id)."""
        return f"{self.group}-{self.instance_id}"

    @property
    def topics(self) -> AgentTopics:
        return AgentTopics(self.input, self.alerts, self.dead_letter, self.group)


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL for ``User:agent`` from any host, on a literal resource name unless
    ``pattern`` says PREFIXED."""

    resource_type: ResourceType
    name: str
    operation: AclOperation
    pattern: ResourcePatternType = ResourcePatternType.LITERAL

    def binding(self, principal: str = "User:agent") -> AclBinding:
        return AclBinding(
            self.resource_type,
            self.name,
            self.pattern,
            principal,
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )

    def with_operation(self, operation: AclOperation) -> Grant:
        return Grant(self.resource_type, self.name, operation, self.pattern)

    def __str__(self) -> str:
        return f"{self.operation.name} on {self.resource_type.name} {self.name}"


def required_grants(n: Names) -> dict[str, Grant]:
    """What the agent cannot run without (exactly-once delivery); docs/operations.md lists the same.

    READ and WRITE imply DESCRIBE, which the agent also needs (metadata, coordinators), so no
    DESCRIBE ACL is listed. The idempotent producer needs no IDEMPOTENT_WRITE on the cluster:
    WRITE on a topic (or on the transactional id) has implied it since Kafka 2.8 (KIP-679).
    """
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    return {
        "input-read": Grant(topic, n.input, AclOperation.READ),
        "group-read": Grant(group, n.group, AclOperation.READ),
        "alerts-write": Grant(topic, n.alerts, AclOperation.WRITE),
        "dead-letter-write": Grant(topic, n.dead_letter, AclOperation.WRITE),
        "transactional-id-write": Grant(txn, n.transactional_id, AclOperation.WRITE),
    }


def optional_grants(n: Names) -> dict[str, Grant]:
    """Recommended: the agent reads the output topics' ``max.message.bytes`` at start-up and keeps
    every record under it; without these it warns and assumes the broker default."""
    return {
        "alerts-describe-configs": Grant(ResourceType.TOPIC, n.alerts, AclOperation.DESCRIBE_CONFIGS),
        "dead-letter-describe-configs": Grant(
            ResourceType.TOPIC, n.dead_letter, AclOperation.DESCRIBE_CONFIGS
        ),
    }


def documented_grants(n: Names) -> dict[str, Grant]:
    return required_grants(n) | optional_grants(n)


# ----------------------------------------------------------------------------- cluster set-up


def _grant(admin: AdminClient, grants: Sequence[Grant]) -> None:
    """Create the ACLs and wait until the broker's authorizer lists them all.

    CreateAcls returns once the controller committed the records; the broker applies them when it
    replays the metadata log, a moment later. DescribeAcls is answered from the broker's own
    authorizer, so once it lists every binding, requests are authorized with them.
    """
    bindings = [g.binding() for g in grants]
    if not bindings:
        return
    for future in admin.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=30)
    wanted = set(bindings)
    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        "User:agent",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deadline = time.monotonic() + ACL_PROPAGATION_TIMEOUT_S
    while time.monotonic() < deadline:
        listed = set(admin.describe_acls(everything, request_timeout=10).result(timeout=15))
        if wanted <= listed:
            return
        time.sleep(0.1)
    raise AssertionError(f"the broker did not list the new ACLs within {ACL_PROPAGATION_TIMEOUT_S} s")


def _create_topics(admin: AdminClient, n: Names) -> None:
    """The input topic (two partitions) and the output topics, once every partition has a leader."""
    wanted = {n.input: INPUT_PARTITIONS, n.alerts: 1, n.dead_letter: 1}
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=count) for name, count in wanted.items()], operation_timeout=30
    )
    for future in futures.values():
        future.result(timeout=30)
    for name, count in wanted.items():
        wait_for_topic(admin, name, count)


@dataclass(frozen=True)
class Stream:
    """What was produced to the input topic: events (scored) and malformed records (dead-lettered),
    each with the (partition, offset) it landed at."""

    events: list[dict[str, object]]
    event_positions: list[tuple[int, int]]
    malformed_positions: list[tuple[int, int]]


def _produce_stream(broker: SecuredBroker, n: Names, events: list[dict[str, object]]) -> Stream:
    records: list[Record] = [
        *json_records(events),
        *((f"bad-{i}".encode(), value, [("origin", b"test")]) for i, value in enumerate(MALFORMED)),
    ]
    positions = produce(broker.plaintext_bootstrap, n.input, records)
    assert len(positions) == len(records)
    return Stream(events, positions[: len(events)], positions[len(events) :])


def _prepare(
    broker: SecuredBroker, n: Names, grants: Sequence[Grant], events: list[dict[str, object]]
) -> Stream:
    admin = broker.admin()
    _create_topics(admin, n)
    _grant(admin, grants)
    return _produce_stream(broker, n, events)


# ----------------------------------------------------------------------------- the agent


def _credentials(directory: Path, password: str) -> Path:
    """A ``$CREDENTIALS_DIRECTORY`` as systemd's LoadCredential leaves it: one 0600 file per secret."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = directory / PASSWORD_FILE
    secret.write_text(password)
    secret.chmod(0o600)
    return directory


def _secured_env(broker: SecuredBroker, n: Names, bundle: Path, **extra: str) -> dict[str, str]:
    """``agent_env`` for the SASL_SSL listener as user ``agent``; no password in it (see
    ``_credentials``)."""
    settings = {
        "kafka__security_protocol": "SASL_SSL",
        "kafka__sasl_mechanism": SASL_MECHANISM,
        "kafka__sasl_username": broker.agent_username,
        "kafka__ssl_ca_location": str(broker.ca_location),
    } | extra
    return agent_env(broker.sasl_ssl_bootstrap, n.topics, bundle, instance_id=n.instance_id, **settings)


def _start_agent(
    broker: SecuredBroker,
    n: Names,
    bundle: Path,
    work: Path,
    *,
    password: str | None = None,
    **extra: str,
) -> AgentProcess:
    credentials = _credentials(work / "credentials", broker.agent_password if password is None else password)
    env = _secured_env(broker, n, bundle, **extra)
    assert not any(broker.agent_password in value for value in env.values())
    return AgentProcess(env, work / "agent.log", extra_env={"CREDENTIALS_DIRECTORY": str(credentials)})


def _agent_errors(log: str) -> list[str]:
    """The agent's own ERROR/CRITICAL records (not librdkafka's log lines, which it forwards)."""
    return [line for line in log.splitlines() if re.search(r" (ERROR|CRITICAL) (agent|exporters)\.", line)]


def _http_body(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode("utf-8", "replace"))


def _message_bytes(msg: Message) -> bytes:
    """Key, value and every header of a record, as one blob to search."""
    parts = [msg.key() or b"", msg.value() or b""]
    for name, value in msg.headers() or []:
        parts += [name.encode(), value or b""]
    return b"\x00".join(parts)


# ----------------------------------------------------------------------------- exactly-once run


@dataclass(frozen=True)
class SecuredRun:
    """One agent run with the documented ACLs, and everything it showed the outside world."""

    names: Names
    stream: Stream
    anomalous: set[int]
    alerts: list[Message]
    dead_letters: list[Message]
    committed: dict[int, int]
    ends: dict[int, int]
    metrics_page: str
    metrics: dict[str, float]
    health_pages: list[str]
    log: str
    exit_code: int


@pytest.fixture(scope="module")
def secured_run(
    secured_broker: SecuredBroker,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SecuredRun]:
    """The agent with the documented ACL set, at DEBUG with librdkafka's ``security`` and ``conf``
    debug contexts on (the most an operator would turn on to debug a login), run until the group
    committed the whole input, then stopped with SIGTERM."""
    work = tmp_path_factory.mktemp("secured-run")
    n = Names.fresh()
    events = make_events(datasets_dir, normal=60, bgl_alerts=12, foreign=12, seed=23)
    expected = offline_anomalies(agent_bundle, events, work)
    anomalous = {i for i, flagged in enumerate(expected) if flagged}
    assert 5 <= len(anomalous) <= len(events) - 30, f"{len(anomalous)} anomalies among {len(events)}"
    stream = _prepare(secured_broker, n, list(documented_grants(n).values()), events)

    agent = _start_agent(
        secured_broker,
        n,
        agent_bundle,
        work,
        log_level="DEBUG",
        kafka__librdkafka=json.dumps({"debug": "security,conf"}),
    )
    try:
        agent.wait_ready()
        wait_caught_up(secured_broker.plaintext_bootstrap, n.group, n.input, timeout=CATCH_UP_TIMEOUT_S)
        metrics_page = _http_body(f"http://127.0.0.1:{agent.metrics_port}/metrics")
        metrics = agent.metrics()
        health_pages = [
            _http_body(f"http://127.0.0.1:{agent.health_port}{path}") for path in ("/healthz", "/readyz")
        ]
        code = agent.terminate()
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    committed, ends = offsets(secured_broker.plaintext_bootstrap, n.group, n.input)
    yield SecuredRun(
        names=n,
        stream=stream,
        anomalous=anomalous,
        alerts=read_committed(secured_broker.plaintext_bootstrap, n.alerts),
        dead_letters=read_committed(secured_broker.plaintext_bootstrap, n.dead_letter),
        committed=committed,
        ends=ends,
        metrics_page=metrics_page,
        metrics=metrics,
        health_pages=health_pages,
        log=agent.log(),
        exit_code=code,
    )


def test_tls_is_verified_against_the_cluster_ca(secured_broker: SecuredBroker) -> None:
    """The listener's certificate chains to ``tls/ca.pem`` and names 127.0.0.1, and clients verify
    it: with the CA metadata comes back; with the system's CAs instead the TLS handshake fails."""
    AdminClient(secured_broker.sasl_config()).list_topics(timeout=30)

    reported: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reported.append(record.getMessage())

    quiet = logging.getLogger(f"{__name__}.untrusting-client")
    quiet.propagate = False  # librdkafka retries the handshake every few ms until destroyed
    quiet.addHandler(Keep())
    conf = secured_broker.sasl_config() | {"error_cb": lambda e: reported.append(e.str()), "logger": quiet}
    del conf["ssl.ca.location"]
    untrusting = AdminClient(conf)
    with pytest.raises(KafkaException):
        untrusting.list_topics(timeout=5)
    untrusting.poll(1)  # serves error_cb and the logger
    del untrusting
    assert any("certificate verify failed" in line for line in reported), reported[:5]


def test_exactly_once_with_the_documented_acls(secured_run: SecuredRun) -> None:
    run, n, stream = secured_run, secured_run.names, secured_run.stream
    assert run.exit_code == 0, run.log[-3000:]
    assert "Traceback" not in run.log
    assert not _agent_errors(run.log), _agent_errors(run.log)
    assert f"started delivery=exactly_once group={n.group}" in run.log
    # librdkafka's security debug: the broker's certificate was verified (against the CA, host name
    # 127.0.0.1 included) and the clients logged in with SCRAM, not over some other listener.
    assert "Broker SSL certificate verified" in run.log
    assert "Enabled endpoint identification using address 127.0.0.1" in run.log
    assert f"Authenticated as agent using {SASL_MECHANISM}" in run.log

    sources = alert_sources(run.alerts)
    duplicates = {s: c for s, c in Counter(sources).items() if c > 1}
    assert not duplicates, f"alerts published more than once: {duplicates}"
    event_at = {position: i for i, position in enumerate(stream.event_positions)}
    alerted = {event_at[s] for s in sources}
    assert alerted == run.anomalous, (
        f"missing alerts for events {sorted(run.anomalous - alerted)}, "
        f"unexpected alerts for {sorted(alerted - run.anomalous)}"
    )
    for msg in run.alerts:
        alert = json.loads(msg.value() or b"")
        assert alert["source"]["topic"] == n.input and alert["agent"] == n.instance_id

    dead = Counter(
        (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        for h in (dict(m.headers() or []) for m in run.dead_letters)
    )
    assert dead == Counter(stream.malformed_positions), (
        f"dead letters {dead}, malformed at {stream.malformed_positions}"
    )

    assert run.committed == run.ends, "the group's committed offsets did not reach the end of the input"
    assert sum(run.ends.values()) == len(stream.events) + len(MALFORMED)
    assert run.metrics['anomaly_agent_transactions_total{result="aborted"}'] == 0
    assert run.metrics["anomaly_agent_alerts_published_total"] == len(run.anomalous)
    # The documented set includes DESCRIBE_CONFIGS: the agent read the topics' real limits.
    assert "cannot read max.message.bytes" not in run.log


def test_password_appears_in_no_output(
    secured_run: SecuredRun, secured_broker: SecuredBroker, agent_bundle: Path, tmp_path: Path
) -> None:
    password = secured_broker.agent_password
    run = secured_run
    # librdkafka's security debug was on and logged the login the search below covers.
    assert f"Authenticated as {secured_broker.agent_username} using {SASL_MECHANISM}" in run.log
    assert password not in run.log, "the password is in the agent's log"
    assert password not in run.metrics_page, "the password is on the metrics page"
    for page in run.health_pages:
        assert password not in page, "the password is on a health page"
    secret = password.encode()
    for msg in [*run.alerts, *run.dead_letters]:
        assert secret not in _message_bytes(msg), f"the password is in a record of {msg.topic()}"
    assert run.alerts and run.dead_letters, "nothing to search"

    # validate-config on a TOML with the same settings, the password inline (the worst case) ...
    n = run.names
    toml = tmp_path / "agent.toml"
    toml.write_text(
        "\n".join(
            [
                f"instance_id = {json.dumps(n.instance_id)}",
                "[kafka]",
                f"bootstrap_servers = {json.dumps(secured_broker.sasl_ssl_bootstrap)}",
                f"group_id = {json.dumps(n.group)}",
                'security_protocol = "SASL_SSL"',
                f"sasl_mechanism = {json.dumps(SASL_MECHANISM)}",
                f"sasl_username = {json.dumps(secured_broker.agent_username)}",
                f"sasl_password = {json.dumps(password)}",
                f"ssl_ca_location = {json.dumps(str(secured_broker.ca_location))}",
                "[topics]",
                f"input = [{json.dumps(n.input)}]",
                f"alerts = {json.dumps(n.alerts)}",
                f"dead_letter = {json.dumps(n.dead_letter)}",
                "[model]",
                f"bundle = {json.dumps(str(agent_bundle))}",
                "",
            ]
        )
    )
    shown = cli("validate-config", str(toml))
    assert shown.returncode == 0, shown.stderr
    assert password not in shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["kafka"]["sasl_password"] == "**********"

    # ... and with the password from $CREDENTIALS_DIRECTORY, as under systemd.
    toml.write_text(re.sub(r"(?m)^sasl_password = .*\n", "", toml.read_text()))
    credentials = _credentials(tmp_path / "credentials", password)
    shown = subprocess.run(
        [*_cli_command(), "validate-config", str(toml)],
        env=clean_env() | {"CREDENTIALS_DIRECTORY": str(credentials)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert password not in shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["kafka"]["sasl_password"] == "**********", "the credential was not read"

    # kafka.sh prints where the passwords are, never what they are.
    for args in (["status"], ["start", "--secure"]):
        out = kafka_sh(*args, "--dir", str(secured_broker.state_dir), timeout=120)
        assert out.returncode == 0, out.stderr
        for secret_text in (password, secured_broker.admin_password):
            assert secret_text not in out.stdout + out.stderr, f"kafka.sh {args[0]} printed a password"


def _cli_command() -> list[str]:
    """``cli`` of agent_helpers, for a run that needs an environment of its own."""
    return [sys.executable, "-m", "agent.cli"]


# ----------------------------------------------------------------------------- what is optional


def _run_to_the_end(
    broker: SecuredBroker,
    grants: Sequence[Grant],
    bundle: Path,
    datasets_dir: Path,
    work: Path,
    n: Names,
    **extra: str,
) -> str:
    """Produce a small stream, run the agent with ``grants`` until its group committed all of it,
    stop it, and check every malformed record was dead-lettered and no event alerted twice;
    returns the agent's log."""
    events = make_events(datasets_dir, normal=20, bgl_alerts=4, foreign=4, seed=5)
    stream = _prepare(broker, n, grants, events)
    agent = _start_agent(broker, n, bundle, work, **extra)
    try:
        wait_caught_up(broker.plaintext_bootstrap, n.group, n.input, timeout=CATCH_UP_TIMEOUT_S)
        assert agent.terminate() == 0, agent.tail()
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    log = agent.log()
    assert "Traceback" not in log and not _agent_errors(log), agent.tail()
    dead = read_committed(broker.plaintext_bootstrap, n.dead_letter)
    assert len(dead) == len(stream.malformed_positions)
    sources = alert_sources(read_committed(broker.plaintext_bootstrap, n.alerts))
    assert len(sources) == len(set(sources)) > 0
    return log


def test_describe_configs_is_optional(
    secured_broker: SecuredBroker, agent_bundle: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    """Only the required ACLs (no DESCRIBE_CONFIGS, no DESCRIBE, no IDEMPOTENT_WRITE): the agent
    warns that it cannot read the output topics' ``max.message.bytes`` and runs exactly-once."""
    n = Names.fresh()
    grants = list(required_grants(n).values())
    log = _run_to_the_end(secured_broker, grants, agent_bundle, datasets_dir, tmp_path, n)
    for topic in (n.alerts, n.dead_letter):
        assert re.search(rf"WARNING agent\.\S+: .*max\.message\.bytes.*{re.escape(topic)}", log), (
            f"no warning about {topic}'s max.message.bytes"
        )


@pytest.mark.parametrize("variant", ["at-least-once", "prefixed-transactional-id"])
def test_documented_variants_of_the_acl_set(
    variant: str, secured_broker: SecuredBroker, agent_bundle: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    """docs/operations.md: ``delivery = "at_least_once"`` needs no transactional-id ACL, and a
    PREFIXED one on ``<group_id>-`` covers every instance id (instances named at run time)."""
    n = Names.fresh()
    grants = documented_grants(n)
    del grants["transactional-id-write"]
    extra: dict[str, str] = {}
    if variant == "at-least-once":
        extra["delivery"] = "at_least_once"
    else:
        grants["transactional-id-prefix"] = Grant(
            ResourceType.TRANSACTIONAL_ID, f"{n.group}-", AclOperation.WRITE, ResourcePatternType.PREFIXED
        )
    log = _run_to_the_end(
        secured_broker, list(grants.values()), agent_bundle, datasets_dir, tmp_path, n, **extra
    )
    expected = "at_least_once" if variant == "at-least-once" else "exactly_once"
    assert f"started delivery={expected} group={n.group}" in log


def _grouping(n: Names) -> tuple[str, str]:
    """The grouping changelog (its default name) and a feedback topic for ``n``."""
    return f"{n.alerts}.groups", f"{n.input}-verdicts"


def grouping_grants(n: Names) -> dict[str, Grant]:
    """docs/operations.md: alert grouping reads and writes its changelog, feedback reads its topic."""
    changelog, feedback = _grouping(n)
    return {
        "groups-read": Grant(ResourceType.TOPIC, changelog, AclOperation.READ),
        "groups-write": Grant(ResourceType.TOPIC, changelog, AclOperation.WRITE),
        "feedback-read": Grant(ResourceType.TOPIC, feedback, AclOperation.READ),
    }


def _grouping_topics(broker: SecuredBroker, n: Names, *, changelog: bool) -> None:
    changelog_name, feedback = _grouping(n)
    wanted = {feedback: 1} | ({changelog_name: INPUT_PARTITIONS} if changelog else {})
    admin = broker.admin()
    topics = [
        NewTopic(name, num_partitions=count, config={"cleanup.policy": "compact"})
        for name, count in wanted.items()
    ]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        future.result(timeout=30)
    for name, count in wanted.items():
        wait_for_topic(admin, name, count)


@pytest.mark.parametrize("changelog", ["created-by-the-agent", "created-beforehand"])
def test_grouping_and_feedback_with_their_documented_acls(
    changelog: str, secured_broker: SecuredBroker, agent_bundle: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    """With grouping (the default) and feedback on, the documented extra ACLs suffice: READ and
    WRITE on the changelog (plus CREATE when the agent is to create it), READ on the feedback topic."""
    n = Names.fresh()
    beforehand = changelog == "created-beforehand"
    _grouping_topics(secured_broker, n, changelog=beforehand)
    grants = documented_grants(n) | grouping_grants(n)
    if not beforehand:
        grants["groups-create"] = Grant(ResourceType.TOPIC, _grouping(n)[0], AclOperation.CREATE)
    log = _run_to_the_end(
        secured_broker, list(grants.values()), agent_bundle, datasets_dir, tmp_path, n,
        alerts__group_by="pattern", topics__feedback=_grouping(n)[1],
    )  # fmt: skip
    assert ("created the grouping changelog" in log) is not beforehand, log[-2000:]
    assert "grouping state restored" in log


@pytest.mark.parametrize("missing", ["groups-read", "groups-write", "groups-create", "feedback-read"])
def test_grouping_without_one_of_its_acls_stops_the_agent_with_a_clear_message(
    missing: str, secured_broker: SecuredBroker, agent_bundle: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    """Exit 77 naming the topic and the operation to grant; ``groups-create``: the changelog does
    not exist and the agent may not create it."""
    n = Names.fresh()
    _grouping_topics(secured_broker, n, changelog=missing != "groups-create")
    grants = documented_grants(n) | grouping_grants(n)
    absent = grants.pop(missing) if missing != "groups-create" else None
    _prepare(secured_broker, n, list(grants.values()), make_events(datasets_dir, normal=8, bgl_alerts=2,
             foreign=2, seed=3))  # fmt: skip
    agent = _start_agent(
        secured_broker,
        n,
        agent_bundle,
        tmp_path,
        alerts__group_by="pattern",
        topics__feedback=_grouping(n)[1],
    )
    try:
        code = agent.wait_exit(timeout=REFUSAL_WITHIN_S)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    log = agent.log()
    assert code == EX_NOPERM and "Traceback" not in log, agent.tail()
    topic = _grouping(n)[0] if absent is None else absent.name
    operation = "CREATE" if absent is None else absent.operation.name
    naming = [line for line in _agent_errors(log) if topic in line and re.search(rf"\b{operation}\b", line)]
    assert naming, f"no ERROR record names {topic} and {operation}:\n{agent.tail()}"


# ----------------------------------------------------------------------------- what is refused


@dataclass(frozen=True)
class Missing:
    """A required ACL left out; ``describe_kept`` grants DESCRIBE on the resource instead (an
    operator who granted DESCRIBE but forgot READ/WRITE), which moves the failure from start-up
    metadata to the data path (fetch, AddPartitionsToTxn, JoinGroup, InitProducerId)."""

    grant: str
    describe_kept: bool

    @property
    def id(self) -> str:
        return self.grant + ("-describe-kept" if self.describe_kept else "")


MISSING = [Missing(grant, kept) for grant in required_grants(Names.fresh()) for kept in (False, True)]


@pytest.mark.parametrize("missing", MISSING, ids=[m.id for m in MISSING])
def test_each_missing_acl_stops_the_agent_with_a_clear_message(
    missing: Missing,
    secured_broker: SecuredBroker,
    agent_bundle: Path,
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """Exit 77 (EX_NOPERM) within a minute, no traceback, and an ERROR record of the agent that
    names the resource and the operation it lacks (READ/WRITE, as the ACL to add)."""
    n = Names.fresh()
    grants = documented_grants(n)
    absent = grants.pop(missing.grant)
    if missing.describe_kept:
        grants[f"{missing.grant}-describe"] = absent.with_operation(AclOperation.DESCRIBE)
    # Normal events, anomalies and malformed records: every output the batch has must be written.
    events = make_events(datasets_dir, normal=20, bgl_alerts=4, foreign=4, seed=9)
    _prepare(secured_broker, n, list(grants.values()), events)

    agent = _start_agent(secured_broker, n, agent_bundle, tmp_path)
    started = time.monotonic()
    try:
        code = agent.wait_exit(timeout=REFUSAL_WITHIN_S)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    took = time.monotonic() - started
    log = agent.log()
    assert code == EX_NOPERM, (
        f"without {absent}: exit {code} after {took:.0f} s, expected 77:\n{agent.tail()}"
    )
    assert "Traceback" not in log, agent.tail()
    operation = re.compile(rf"\b{absent.operation.name}\b", re.IGNORECASE)
    naming = [line for line in _agent_errors(log) if absent.name in line and operation.search(line)]
    assert naming, (
        f"no ERROR record of the agent names {absent.name} and {absent.operation.name}:\n{agent.tail()}"
    )
    if missing.grant != "dead-letter-write":  # there, a batch without a malformed record may commit
        committed_alerts = read_committed(secured_broker.plaintext_bootstrap, n.alerts, quiet_s=0.5)
        assert not committed_alerts, "alerts were committed although a required ACL is missing"


def test_wrong_password_fails_clearly(
    secured_broker: SecuredBroker, agent_bundle: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    """A password the broker rejects: the agent stops within a minute with EX_NOPERM (not the 69 of
    an unreachable broker after ``lifecycle.broker_unavailable_exit_seconds``), says in
    an ERROR record of its own that authentication failed, and prints neither password."""
    n = Names.fresh()
    _prepare(secured_broker, n, list(documented_grants(n).values()), [])
    wrong = "not-" + secured_broker.agent_password[::-1]
    agent = _start_agent(secured_broker, n, agent_bundle, tmp_path, password=wrong)
    try:
        code = agent.wait_exit(timeout=REFUSAL_WITHIN_S)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    log = agent.log()
    assert code == EX_NOPERM, f"exit {code}:\n{agent.tail()}"
    assert "Traceback" not in log, agent.tail()
    assert any(re.search("authenticat", line, re.IGNORECASE) for line in _agent_errors(log)), agent.tail()
    assert wrong not in log and secured_broker.agent_password not in log


# ----------------------------------------------------------------------------- kafka.sh --secure


def test_kafka_sh_secure_survives_restarts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A state dir keeps its CA, keystore and SCRAM users across restarts (on new ports); one
    formatted without --secure is refused with a message instead of started without users."""
    state = tmp_path_factory.mktemp("secure-restarts")
    owner = ["--owner-pid", str(os.getpid())]
    seen: list[tuple[str, str]] = []
    try:
        for _ in range(2):
            started = kafka_sh("start", "--secure", "--dir", str(state), *owner)
            assert started.returncode == 0, started.stderr
            sasl = (state / "bootstrap-sasl-ssl").read_text().strip()
            seen.append((sasl, (state / "tls" / "ca.pem").read_text()))
            broker = SecuredBroker(
                plaintext_bootstrap=started.stdout.split()[-1],
                sasl_ssl_bootstrap=sasl,
                ca_location=state / "tls" / "ca.pem",
                agent_username="agent",
                agent_password=(state / "sasl" / "agent.password").read_text().strip(),
                admin_username="admin",
                admin_password=(state / "sasl" / "admin.password").read_text().strip(),
                state_dir=state,
            )
            for user, password in (("agent", broker.agent_password), ("admin", broker.admin_password)):
                AdminClient(broker.sasl_config(user, password)).list_topics(timeout=30)
            assert (state / "sasl" / "agent.password").stat().st_mode & 0o777 == 0o600
            stopped = kafka_sh("stop", "--dir", str(state))
            assert stopped.returncode == 0, stopped.stderr
            assert not (state / "bootstrap-sasl-ssl").exists()
        assert seen[0][1] == seen[1][1], "the CA was made again on restart"
    finally:
        kafka_sh("stop", "--dir", str(state))

    plain = tmp_path_factory.mktemp("plain-then-secure")
    try:
        assert kafka_sh("start", "--dir", str(plain), *owner).returncode == 0
        assert kafka_sh("stop", "--dir", str(plain)).returncode == 0
        refused = kafka_sh("start", "--secure", "--dir", str(plain), *owner)
        assert refused.returncode == 1
        assert "formatted without --secure" in refused.stderr, refused.stderr
    finally:
        kafka_sh("stop", "--dir", str(plain))
