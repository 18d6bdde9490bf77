"""Session fixture for the deploy/ checks: the real tools, installed on demand.

A clean CI machine has none of the Debian tools; the fixture runs deploy/ci/install-tools.sh once,
then fails (never skips) with the script's output when a tool is still missing, so a green run
always means the real tool ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_harness import train_bundle
from ops_tools import OpsTools, ensure_tools


@pytest.fixture(scope="session")
def ops_tools() -> OpsTools:
    try:
        return ensure_tools()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def ops_bundle(datasets_dir: Path, embedder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle for the ops tests that run the agent, trained by the real CLI."""
    return train_bundle(datasets_dir, embedder_dir, tmp_path_factory.mktemp("ops-bundle") / "bundle")
