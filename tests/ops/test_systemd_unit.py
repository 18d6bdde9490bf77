"""deploy/systemd/anomaly-agent.service: the real systemd-analyze accepts it, its exposure score
stays "OK", and the settings it relies on (drain grace, credentials, config path) hold."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ops_tools import DEPLOY, OpsTools

from agent.config import load_settings

UNIT = DEPLOY / "systemd" / "anomaly-agent.service"
EXAMPLE_TOML = DEPLOY / "systemd" / "agent.toml"
INSTALLED_EXEC = "/opt/anomaly-agent/bin/anomaly-agent"


def _unit_entries(section: str) -> dict[str, list[str]]:
    """All values of each key in ``section`` (systemd keys repeat: LoadCredential, SystemCallFilter)."""
    entries: dict[str, list[str]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's entry point: `verify` checks that the
    executable exists, and /opt/anomaly-agent is where operators install it, not this machine."""
    exe = Path(sys.executable).parent / "anomaly-agent"
    assert exe.is_file(), f"{exe} missing: the project's console script is not installed"
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_EXEC, str(exe)))
    return copy


def test_systemd_analyze_verify_passes(ops_tools: OpsTools, tmp_path: Path) -> None:
    unit = _verifiable_copy(tmp_path)
    proc = subprocess.run(
        [ops_tools.systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    # verify only warns (exit 0) about unknown keys or keys in the wrong section: treat as errors.
    assert proc.stderr.strip() == "", proc.stderr


def test_systemd_analyze_verify_rejects_a_broken_unit(ops_tools: OpsTools, tmp_path: Path) -> None:
    """The check above can fail: a unit whose executable is missing does not verify."""
    broken = tmp_path / UNIT.name
    broken.write_text(UNIT.read_text())
    proc = subprocess.run(
        [ops_tools.systemd_analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert INSTALLED_EXEC in proc.stderr


def test_security_exposure_is_ok(ops_tools: OpsTools) -> None:
    """`systemd-analyze security` scores 0 (best) to 10; --threshold=20 fails above 2.0 ("OK")."""
    proc = subprocess.run(
        [ops_tools.systemd_analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    overall = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert overall, proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exposure {overall.group(1)} above 2.0:\n{proc.stdout}"
    assert float(overall.group(1)) <= 2.0
    assert overall.group(2) == "OK"


def test_lifecycle_keys_match_the_agent() -> None:
    service = _unit_entries("Service")
    assert service["Type"] == ["notify"]
    assert _seconds(service["WatchdogSec"][0]) > 0
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # Drain must finish before systemd escalates to SIGKILL, with the default and the example grace.
    stop = _seconds(service["TimeoutStopSec"][0])
    default_grace = load_settings().lifecycle.shutdown_grace_seconds
    example_grace = load_settings(EXAMPLE_TOML).lifecycle.shutdown_grace_seconds
    assert stop >= max(default_grace, example_grace) + 10
    # A refused configuration (78), bundle (65) or permission (77): restarting cannot help.
    assert {"65", "77", "78"} <= set(service["RestartPreventExitStatus"][0].split())


def test_state_config_and_credentials_fit_the_settings(tmp_path: Path) -> None:
    service = _unit_entries("Service")
    assert service["DynamicUser"] == ["yes"]
    state = service["StateDirectory"][0]
    config_dir = service["ConfigurationDirectory"][0]
    assert f"--config ${{CONFIGURATION_DIRECTORY}}/{EXAMPLE_TOML.name}" in service["ExecStart"][0]

    settings = load_settings(EXAMPLE_TOML)
    # The bundle lives in the StateDirectory (the only writable place besides the cache).
    assert settings.model.bundle.is_relative_to(Path("/var/lib") / state)
    assert config_dir == "anomaly-agent"

    # Each LoadCredential name is the environment twin of a secret setting; the settings read the
    # file systemd places in $CREDENTIALS_DIRECTORY.
    credentials = [entry.lstrip("-").split(":", 1)[0] for entry in service["LoadCredential"]]
    assert "ANOMALY_AGENT_KAFKA__SASL_PASSWORD" in credentials
    for name in credentials:
        (tmp_path / name).write_text(f"secret-of-{name}\n")
    loaded = load_settings(EXAMPLE_TOML, secrets_dir=tmp_path)
    client = loaded.kafka.client_config()
    assert client["sasl.password"] == "secret-of-ANOMALY_AGENT_KAFKA__SASL_PASSWORD"
    assert client["ssl.key.password"] == "secret-of-ANOMALY_AGENT_KAFKA__SSL_KEY_PASSWORD"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
    ],
)
def test_hardening_directives(key: str, expected: str) -> None:
    assert expected in _unit_entries("Service")[key]


def test_unit_parses_as_ini() -> None:
    """No duplicate sections and every line is key=value: what systemd and config tools assume."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
