"""kafka-anomaly-agent: real-time anomaly detection for text events on Kafka."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kafka-anomaly-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
