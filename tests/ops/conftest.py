"""Session fixture for the deploy/ checks: the real tools, installed on demand.

A clean CI machine has none of the Debian tools; the fixture runs deploy/ci/install-tools.sh once,
then fails (never skips) with the script's output when a tool is still missing, so a green run
always means the real tool ran.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from agent_harness import train_bundle
from ops_tools import OpsTools, ensure_tools
from shared_resources import shared


def _tools(_directory: Path, _owner_pid: int) -> tuple[dict[str, Any], None]:
    try:
        return asdict(ensure_tools()), None
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def ops_tools(pytestconfig: pytest.Config) -> OpsTools:
    """The tools, installed once per run (one apt-get at a time, whatever the number of workers)."""
    found = shared(pytestconfig, "ops-tools", _tools)
    return OpsTools(**found | {"kustomize": tuple(found["kustomize"])})


@pytest.fixture(scope="session")
def ops_bundle(pytestconfig: pytest.Config, datasets_dir: Path, embedder_dir: Path) -> Path:
    """One bundle for the ops tests that run the agent, trained once per run by the real CLI."""
    path: str = shared(
        pytestconfig,
        "ops-bundle",
        lambda directory, _: (str(train_bundle(datasets_dir, embedder_dir, directory / "bundle")), None),
    )
    return Path(path)
