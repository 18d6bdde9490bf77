"""Alert decisions: which anomalous events are published (``alerting``), one alert per pattern and
cooldown (``grouping``, a pure event-time state machine), operators' verdicts (``feedback``, read
live by ``verdicts``) and the ``anomaly-agent feedback`` command; pattern ``rates`` (run per
partition by ``partition_rates``) and the ``sessions`` tracker, pure event-time state machines too,
whose changelog codecs share ``state_json``.

May import the model and the Kafka layer below it, ``agent.config`` and ``exporters``; never the
loop or the process on top (import-linter).
"""
