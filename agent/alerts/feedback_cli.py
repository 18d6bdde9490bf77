"""``anomaly-agent feedback``: write one operator verdict on a pattern to ``topics.feedback``.

It reads the agent's own settings (``--config`` and the environment, as ``run`` does), so it
reaches the cluster with the same bootstrap servers and credentials; the verdict is produced
idempotently and awaited, and the command says where it landed. Every running agent reads it
within about a second (``agent.alerts.verdicts``).
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import KafkaError, Message, Producer

from agent.alerts.feedback import FeedbackError, feedback_record
from agent.config import EXIT_CONFIG, ConfigError, load_settings

EXIT_UNAVAILABLE = 69
DELIVERY_TIMEOUT_S = 30.0


def cmd_feedback(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"anomaly-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    topic = settings.topics.feedback
    if topic is None:
        print("anomaly-agent: topics.feedback is not set; name the feedback topic first", file=sys.stderr)
        return EXIT_CONFIG
    try:
        key, value = feedback_record(
            args.pattern, args.verdict, args.by, args.reason, template=args.template, scope=args.scope
        )
    except FeedbackError as exc:
        print(f"anomaly-agent: {exc}", file=sys.stderr)
        return 64  # EX_USAGE
    conf = settings.kafka.client_config()
    conf.update({"enable.idempotence": True, "acks": "all"})
    producer = Producer(conf)
    outcome: list[KafkaError | Message] = []

    def delivered(error: KafkaError | None, msg: Message) -> None:
        outcome.append(error if error is not None else msg)

    producer.produce(topic, key=key, value=value, on_delivery=delivered)
    producer.flush(DELIVERY_TIMEOUT_S)
    if not outcome or isinstance(outcome[0], KafkaError):
        why = outcome[0] if outcome else f"no answer within {DELIVERY_TIMEOUT_S:.0f} s"
        print(f"anomaly-agent: the verdict was not written to {topic}: {why}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    msg = outcome[0]
    scope = "" if args.scope == "novelty" else f" ({args.scope})"
    print(
        f"pattern {args.pattern}{scope} marked {args.verdict} on {topic}[{msg.partition()}] "
        f"offset {msg.offset()}"
    )
    return 0
