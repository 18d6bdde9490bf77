"""Sinks for the agent's output: the alert topic, Prometheus metrics."""
