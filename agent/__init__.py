"""kafka-anomaly-agent: real-time anomaly detection for text events on Kafka.

Layers, top to bottom; a module imports only from layers below its own (``make lint`` runs
import-linter's contracts in pyproject.toml):

* the process and the loop: ``cli`` → ``runner`` (signals, systemd, exit codes) → ``pipeline``
  (the data path: consume → decode → prepare → patterns → score → group → publish);
* ``alerts/``: which anomalous events become alerts, summaries and changelog records;
* ``kafka/`` (consumer, transactions, deadlines, state topics) beside ``model/`` (bundle,
  embedder, masking, patterns, detectors): independent of each other;
* the shared ground: ``decode`` (event bytes → text and fields), ``health``, ``sdnotify``, and
  ``config`` (the settings) under everything.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kafka-anomaly-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
