"""Run a command-line entry point (``anomaly-agent``) with the ONNX embedder slowed, or frozen, on
purpose: the watchdog tests' way to make a batch take as long as they need, on any machine.

    python slow_embedder.py /path/to/anomaly-agent run --config agent.toml

Environment (all optional):

* ``SLOW_EMBED_SECONDS``: sleep this long before every model run (one micro-batch);
* ``SLOW_EMBED_BATCH``: texts per micro-batch (the embedder's ``batch_size``), to make a batch of
  a few dozen events take many model runs;
* ``SLOW_EMBED_FREEZE``: a path; once it exists, the next model run never returns (the loop is
  stuck, as in a deadlock or a native call that hangs);
* ``SLOW_EMBED_LOG``: a JSON line per ``embed`` call (``start``/``end`` as CLOCK_MONOTONIC
  seconds, which every process on the machine shares, and the number of model runs), and a
  ``frozen`` line when the freeze starts.

The patch replaces two methods of ``OnnxEmbedder`` in this process, then runs the entry point's
script as ``__main__``: the agent is otherwise exactly the one the unit starts.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.model import embedder

DELAY_S = float(os.environ.get("SLOW_EMBED_SECONDS", "0"))
BATCH = int(os.environ.get("SLOW_EMBED_BATCH", "0"))
FREEZE = os.environ.get("SLOW_EMBED_FREEZE")
LOG = os.environ.get("SLOW_EMBED_LOG")

_original_run = embedder.OnnxEmbedder._run
_original_embed = embedder.OnnxEmbedder.embed
_runs = [0]


def _note(record: dict[str, Any]) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def _run(self: embedder.OnnxEmbedder, batch: list[Any]) -> Any:
    if FREEZE and Path(FREEZE).exists():
        _note({"event": "frozen", "at": time.monotonic()})
        while True:
            time.sleep(3600)
    time.sleep(DELAY_S)
    _runs[0] += 1
    return _original_run(self, batch)


def _embed(
    self: embedder.OnnxEmbedder, texts: Sequence[str], progress: Callable[[], None] | None = None
) -> Any:
    if BATCH:
        self.batch_size = BATCH
    start, runs = time.monotonic(), _runs[0]
    try:
        return _original_embed(self, texts, progress)
    finally:
        _note({"event": "embed", "start": start, "end": time.monotonic(), "runs": _runs[0] - runs})


embedder.OnnxEmbedder._run = _run  # type: ignore[method-assign]
embedder.OnnxEmbedder.embed = _embed  # type: ignore[method-assign]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
