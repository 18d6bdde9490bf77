"""Helpers for the deploy/ checks: the real tools (systemd-analyze, promtool, prometheus,
kustomize, hadolint, composecheck), installed on demand by deploy/ci/install-tools.sh.

A clean CI machine has none of the Debian tools; the session fixture runs the project's install
script once, then fails (never skips) with the script's output when a tool is still missing, so a
green run always means the real tool ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
INSTALL_SCRIPT = DEPLOY / "ci" / "install-tools.sh"
TOOLS_BIN = REPO_ROOT / ".cache" / "tools" / "bin"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class OpsTools:
    """Resolved command lines of the real tools."""

    systemd_analyze: str
    promtool: str
    prometheus: str
    kustomize: tuple[str, ...]
    hadolint: str
    composecheck: str


def _resolve() -> OpsTools | None:
    path = os.pathsep.join([str(VENV_BIN), str(TOOLS_BIN), os.environ.get("PATH", "")])
    found = {
        name: shutil.which(name, path=path)
        for name in ("systemd-analyze", "promtool", "prometheus", "hadolint")
    }
    kustomize: tuple[str, ...] | None = None
    if (k := shutil.which("kustomize", path=path)) is not None:
        kustomize = (k,)
    elif (kubectl := shutil.which("kubectl", path=path)) is not None:
        kustomize = (kubectl, "kustomize")
    composecheck = TOOLS_BIN / "composecheck"
    sources = [p for p in (DEPLOY / "ci" / "composecheck").iterdir() if p.is_file()]
    stale = not composecheck.is_file() or any(
        p.stat().st_mtime > composecheck.stat().st_mtime for p in sources
    )
    if kustomize is None or stale or any(v is None for v in found.values()):
        return None
    return OpsTools(
        systemd_analyze=str(found["systemd-analyze"]),
        promtool=str(found["promtool"]),
        prometheus=str(found["prometheus"]),
        kustomize=kustomize,
        hadolint=str(found["hadolint"]),
        composecheck=str(composecheck),
    )


def ensure_tools() -> OpsTools:
    """The tools, running the install script once if any is missing; raises naming what failed."""
    tools = _resolve()
    if tools is not None:
        return tools
    env = dict(os.environ, VENV=str(VENV_BIN.parent))
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, env=env, timeout=1200
    )
    tools = _resolve()
    if tools is None:
        raise RuntimeError(
            f"{INSTALL_SCRIPT.relative_to(REPO_ROOT)} could not provide the deploy tools "
            f"(exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return tools
