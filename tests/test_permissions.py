"""Kafka's refusals explained: each names the principal, the resource and what to grant."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from agent.config import load_settings
from agent.kafka.permissions import Permissions

SETTINGS = load_settings(
    instance_id="agent-0",
    kafka={
        "group_id": "detectors",
        "sasl_username": "agent",
        "sasl_password": "s3cret-pw",
        "sasl_mechanism": "SCRAM-SHA-512",
    },
    topics={"input": ["events"], "alerts": "alerts", "dead_letter": "dead"},
)


@pytest.mark.parametrize(
    ("code", "topic", "grant"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "events", "grant READ on topic events"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "alerts", "grant WRITE on topic alerts"),
        (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            None,
            "READ on topic(s) events, WRITE on topics alerts, dead",
        ),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, None, "grant READ on group detectors"),
        (
            KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            None,
            "WRITE on transactional id detectors-agent-0",
        ),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, None, "IDEMPOTENT_WRITE on the cluster"),
    ],
)
def test_authorization_errors_name_what_to_grant(code: int, topic: str | None, grant: str) -> None:
    refused = Permissions(SETTINGS).explain(KafkaError(code), action="consuming", topic=topic)
    assert refused is not None
    message = str(refused)
    assert grant in message and "User:agent" in message and "while consuming" in message
    assert "s3cret-pw" not in message


def test_bad_credentials_name_the_settings_to_check_never_the_password() -> None:
    refused = Permissions(SETTINGS).explain(
        KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"), action="joining"
    )
    assert refused is not None
    assert "kafka.sasl_password" in str(refused) and "SCRAM-SHA-512" in str(refused)
    assert "s3cret-pw" not in str(refused)


def test_other_errors_are_not_refusals() -> None:
    permissions = Permissions(SETTINGS)
    for code in (KafkaError._TRANSPORT, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._TIMED_OUT):
        assert permissions.explain(KafkaError(code), action="x") is None
        assert not permissions.is_refusal(KafkaError(code))


def test_a_missing_authorized_operation_is_a_refusal_naming_it() -> None:
    refused = Permissions(SETTINGS).missing("WRITE", "topic alerts", action="checking topic permissions")
    assert "grant WRITE on topic alerts" in str(refused) and "User:agent" in str(refused)
