"""Session fixture for the deploy/ checks: the real tools, installed on demand.

A clean CI machine has none of the Debian tools; the fixture runs deploy/ci/install-tools.sh once,
then fails (never skips) with the script's output when a tool is still missing, so a green run
always means the real tool ran.
"""

from __future__ import annotations

import pytest
from ops_tools import OpsTools, ensure_tools


@pytest.fixture(scope="session")
def ops_tools() -> OpsTools:
    try:
        return ensure_tools()
    except RuntimeError as exc:
        pytest.fail(str(exc))
