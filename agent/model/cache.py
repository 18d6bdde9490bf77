"""Where heavy, reproducible artifacts (Kafka jars, exported ONNX models) are cached.

One directory per machine, keyed inside by version/hash, so CI and developers pay for a download
or an export once. Callers pass the root explicitly; only the CLI and test fixtures call
``default_cache_root`` to resolve it from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root(environ: dict[str, str] | None = None) -> Path:
    """``$ANOMALY_AGENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kafka-anomaly-agent``, else ``~/.cache/...``."""
    env = os.environ if environ is None else environ
    if env.get("ANOMALY_AGENT_CACHE_DIR"):
        return Path(env["ANOMALY_AGENT_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "kafka-anomaly-agent"
