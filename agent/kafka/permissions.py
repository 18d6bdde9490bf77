"""Kafka refusing the agent: authorization and authentication errors turned into one clear message.

On a secured cluster a missing ACL shows up in many places — a topic's metadata at start-up,
``init_transactions``, the consumer's error callback, a failed delivery inside a transaction —
and librdkafka treats several of them as retriable, so without this the agent would retry
forever or stop with a traceback. ``Permissions.explain`` maps such an error to a
``KafkaPermissionError`` that names the principal, the resource and the operations to grant (the
documented minimal ACL set, docs/operations.md "Secured clusters"); the runner exits 77
(EX_NOPERM) on it. Messages never carry a secret: they are built from settings names, not values.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from agent.config import GroupBy, Settings
from agent.kafka.clients import transactional_id

AUTHENTICATION_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
DOCS = "docs/operations.md, 'Secured clusters'"


class KafkaPermissionError(Exception):
    """Kafka refused the agent's credentials or an operation it needs; the message says what to grant."""


class Permissions:
    """The resources this agent needs, from its settings, for explaining refusals."""

    def __init__(self, settings: Settings) -> None:
        kafka = settings.kafka
        self._principal = f"User:{kafka.sasl_username}" if kafka.sasl_username else "the agent's principal"
        self._inputs = list(settings.topics.input)
        self._outputs = [settings.topics.alerts, settings.topics.dead_letter]
        self._state: list[str] = []  # read at assignment and written: READ and WRITE
        if settings.alerts.group_by is GroupBy.PATTERN:
            self._state.append(settings.topics.groups_topic())
        if settings.topics.feedback is not None:
            self._inputs.append(settings.topics.feedback)
        self._group = kafka.group_id
        self._transactional_id = transactional_id(kafka.group_id, settings.instance_id)
        self._mechanism = kafka.sasl_mechanism or kafka.security_protocol

    def is_refusal(self, error: KafkaError) -> bool:
        return error.code() in AUTHENTICATION_CODES | AUTHORIZATION_CODES

    def explain(
        self, error: KafkaError, *, action: str, topic: str | None = None
    ) -> KafkaPermissionError | None:
        """The refusal ``error`` stands for, or None when it is not one. ``action`` says what the
        agent was doing ("joining the group", "producing"); ``topic`` names the topic involved."""
        code = error.code()
        if code in AUTHENTICATION_CODES:
            return KafkaPermissionError(
                f"Kafka refused the credentials of {self._principal} ({self._mechanism}) while {action}: "
                f"{error.str()}; check kafka.sasl_username and kafka.sasl_password "
                "(or its file in $CREDENTIALS_DIRECTORY)"
            )
        if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            if topic is None:
                need = (
                    f"READ on topic(s) {', '.join(self._inputs)}, WRITE on topics {', '.join(self._outputs)}"
                )
            elif topic in self._inputs:
                need = f"READ on topic {topic}"
            elif topic in self._state:
                need = f"READ and WRITE on topic {topic}"
            else:
                need = f"WRITE on topic {topic}"
        elif code == KafkaError.GROUP_AUTHORIZATION_FAILED:
            need = f"READ on group {self._group}"
        elif code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
            need = f"WRITE on transactional id {self._transactional_id}"
        elif code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
            need = "IDEMPOTENT_WRITE on the cluster"
        else:
            return None
        return self._refused(need, action, error.name())

    def missing(self, operation: str, resource: str, *, action: str) -> KafkaPermissionError:
        """A refusal known without an error: ``operation`` on ``resource`` is not among the
        principal's authorized operations."""
        return self._refused(f"{operation} on {resource}", action, "not among its authorized operations")

    def _refused(self, need: str, action: str, why: str) -> KafkaPermissionError:
        return KafkaPermissionError(
            f"Kafka denied {self._principal} an operation while {action} ({why}): grant {need} "
            f"(READ and WRITE imply DESCRIBE; {DOCS})"
        )
