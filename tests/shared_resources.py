"""Session resources shared by every pytest-xdist worker of a run: made once, used by all.

``make test`` runs the suite in several worker processes (pytest-xdist), and each worker has its
own session fixtures. The expensive ones are servers (the local Kafka broker, the secured broker,
Alertmanager) and artefacts (trained bundles, installed deploy tools). One of each per run is
sound: tests keep apart by unique topics, groups and alertnames, and bundles are read-only.

``shared(config, name, make)``: the first worker to ask runs ``make(directory, owner_pid)`` under
a file lock in the run's shared directory and records what it returns (a JSON-able value, and the
command that stops a server, if any); later askers wait on the lock and read the record. A
failure is recorded too, so every worker fails at once with the first one's message instead of
retrying a ten-minute start. Servers are started with ``--owner-pid`` of the process that owns
the run (the xdist controller, or pytest itself without xdist), whose ``pytest_unconfigure``
runs the recorded stop commands and removes the directory; the scripts' owner watchdog stops
them too if that process dies first.

Without xdist the same code runs in the one process, so a single test run alone behaves alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

SHARED_DIR = pytest.StashKey[Path]()
OWNER_PID = pytest.StashKey[int]()
STOP_TIMEOUT_S = 120.0

# make(directory, owner_pid) -> (value, the command that stops the server it started, or None)
Maker = Callable[[Path, int], tuple[Any, "Stop | None"]]


@dataclass(frozen=True)
class Stop:
    """How the run's owner stops a shared server: a command and the environment it runs with."""

    command: list[str]
    env: dict[str, str]


def pytest_configure(config: pytest.Config) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[SHARED_DIR] = Path(workerinput["shared_dir"])
        config.stash[OWNER_PID] = int(workerinput["owner_pid"])
    else:
        config.stash[SHARED_DIR] = Path(tempfile.mkdtemp(prefix="kaa-shared-"))
        config.stash[OWNER_PID] = os.getpid()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller, per worker: where the shared resources live and who owns them."""
    node.workerinput["shared_dir"] = str(node.config.stash[SHARED_DIR])
    node.workerinput["owner_pid"] = str(node.config.stash[OWNER_PID])


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's owner stops every shared server (last started first), then removes their state."""
    if getattr(config, "workerinput", None) is not None or SHARED_DIR not in config.stash:
        return
    directory = config.stash[SHARED_DIR]
    stops = sorted(directory.glob("*.stop.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in stops:
        stop = Stop(**json.loads(path.read_text()))
        done = subprocess.run(
            stop.command, env=stop.env, capture_output=True, text=True, timeout=STOP_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            warnings.warn(f"{' '.join(stop.command)} failed ({done.returncode}): {done.stderr}", stacklevel=1)
    shutil.rmtree(directory, ignore_errors=True)


def shared(config: pytest.Config, name: str, make: Maker) -> Any:
    """The value ``make`` returned for ``name`` in this run, made by the first worker that asked."""
    root = config.stash[SHARED_DIR]
    record = root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if not record.exists():
            directory = root / name
            directory.mkdir(exist_ok=True)
            try:
                value, stop = make(directory, config.stash[OWNER_PID])
            except BaseException as exc:  # pytest.fail is an OutcomeException: record it too
                record.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                raise
            if stop is not None:
                (root / f"{name}.stop.json").write_text(json.dumps(asdict(stop)))
            record.write_text(json.dumps({"value": value}))
        document = json.loads(record.read_text())
    if "error" in document:
        pytest.fail(f"shared resource {name} could not be made: {document['error']}", pytrace=False)
    return document["value"]
