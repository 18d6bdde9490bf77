"""Kafka plumbing: the consumer and its rebalances (``source``), transactions and retries
(``delivery``), deadlines on every blocking librdkafka call (``calls``), client settings
(``clients``), outages, permissions and the compacted state topics (``changelog``).

May import ``agent.config``, ``agent.decode``, ``agent.health`` and ``exporters``; never the
model, the alert decisions or the loop above them (``make lint`` checks it: import-linter).
"""
