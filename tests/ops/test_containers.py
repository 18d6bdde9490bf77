"""Dockerfile and compose stack, for users who have Docker (no engine runs here): hadolint lints
the Dockerfile; the image's and the compose file's agent settings go through the real settings
model and must give the intended values, consistent with Kafka, Prometheus and Grafana there."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_tools import DEPLOY, REPO_ROOT, OpsTools

from agent.config import Settings, load_settings

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
IMAGE_TOML = DEPLOY / "docker" / "agent.toml"


def _hadolint(ops_tools: OpsTools, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ops_tools.hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120
    )


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _env_list(env: dict[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _volume(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; the source may hold ``${VAR:-default}``."""
    match = re.fullmatch(r"(.+):(/[^:]*)(?::(?:ro|rw))?", spec)
    assert match, spec
    source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", match.group(1))
    return source, match.group(2)


def _settings_with_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What ``anomaly-agent run --config /etc/anomaly-agent/agent.toml`` (the image's CMD) builds
    from the baked TOML plus this environment."""
    for name in [n for n in os.environ if n.startswith("ANOMALY_AGENT_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(IMAGE_TOML)


def test_hadolint_passes(ops_tools: OpsTools) -> None:
    proc = _hadolint(ops_tools, DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(ops_tools: OpsTools, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
    proc = _hadolint(ops_tools, bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


def test_runtime_image_is_non_root_and_torch_free() -> None:
    stages = _stages()
    assert {"build", "runtime", "bundled", "model-image"} <= stages.keys()
    runtime = stages["runtime"]
    users = [line for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in {"0", "root"}
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in runtime)
    # The build installs the project without extras: only [project] dependencies go in.
    installs = [line for line in stages["build"] if "pip install" in line]
    assert installs and all(re.search(r"pip install\b[^&]*\s\.(\s|$)", line) for line in installs), installs
    assert not any("[train" in line or "torch" in line.split("&&")[0] for line in installs)
    requirements = importlib.metadata.requires("kafka-anomaly-agent") or []
    runtime_reqs = [r for r in requirements if "extra ==" not in r]
    assert runtime_reqs
    assert not [r for r in runtime_reqs if re.match(r"(torch|transformers|sentence-transformers)\b", r)]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied: set[str] = set()
    for stage in _stages().values():
        for line in stage:
            if line.startswith("COPY") and "--from=" not in line:
                copied.update(part.rstrip("/") for part in line.split()[1:-1] if not part.startswith("--"))
    assert copied, "no COPY from the build context"
    for path in copied:
        assert (REPO_ROOT / path).exists(), path
        assert any(path == a or path.startswith(a + "/") for a in allowed), (
            f"{path} excluded by .dockerignore"
        )


def test_image_default_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = _stages()
    env_line = next(line for line in stages["runtime"] if line.startswith("ENV "))
    image_env = dict(re.findall(r"(ANOMALY_AGENT_\w+)=(\S+)", env_line))
    image_env.pop("ANOMALY_AGENT_CACHE_DIR")
    settings = _settings_with_env(image_env, monkeypatch)
    assert settings.metrics.host == "0.0.0.0" and settings.health.host == "0.0.0.0"
    assert f"EXPOSE {settings.metrics.port} {settings.health.port}" in stages["runtime"]
    cmd = next(line for line in stages["runtime"] if line.startswith("CMD"))
    assert '"/etc/anomaly-agent/agent.toml"' in cmd
    assert any(
        f"{IMAGE_TOML.relative_to(REPO_ROOT)} /etc/anomaly-agent/agent.toml" in line
        for line in stages["runtime"]
    )


def _compose_go(ops_tools: OpsTools, compose_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ANOMALY_AGENT_BUNDLE"}
    return subprocess.run(
        [ops_tools.composecheck, str(compose_file)], capture_output=True, text=True, timeout=120, env=env
    )


def test_compose_file_loads_with_compose_go(ops_tools: OpsTools) -> None:
    """compose-go (Docker Compose v2's loader) accepts the file: compose-spec schema,
    interpolation and references; its normalized agent environment is the one tested below."""
    proc = _compose_go(ops_tools, COMPOSE)
    assert proc.returncode == 0, proc.stderr
    project = json.loads(proc.stdout)
    assert set(project["services"]) == set(_compose()["services"])
    agent = project["services"]["anomaly-agent"]
    assert agent["environment"] == _env_list(_compose()["services"]["anomaly-agent"]["environment"])
    (bundle,) = agent["volumes"]
    assert bundle["source"] == str(COMPOSE.parent / "bundle") and bundle["read_only"] is True


def test_compose_go_rejects_a_broken_file(ops_tools: OpsTools, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace("    read_only: true\n", "    read_only: true\n    readonly: true\n")
    )
    proc = _compose_go(ops_tools, broken)
    assert proc.returncode != 0
    assert "readonly" in proc.stderr


def test_compose_agent_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    services = compose["services"]
    agent = services["anomaly-agent"]
    settings = _settings_with_env(_env_list(agent["environment"]), monkeypatch)

    # Intended values, through the real settings model.
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.topics.input == ["events"]
    assert settings.topics.alerts == "anomaly-alerts"
    assert settings.topics.dead_letter == "anomaly-dead-letter"
    assert settings.instance_id == "compose-agent-1"
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
    assert (settings.health.host, settings.health.port) == ("0.0.0.0", 8080)

    # Kafka advertises that address, and kafka-init creates every topic the agent uses.
    kafka_env = _env_list(services["kafka"]["environment"])
    assert f"PLAINTEXT://{settings.kafka.bootstrap_servers}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"  # exactly-once on one broker
    init_script = " ".join(services["kafka-init"]["command"])
    for topic in [*settings.topics.input, settings.topics.alerts, settings.topics.dead_letter]:
        assert f"{topic}:" in init_script, topic

    # The bundle is mounted where the settings look; the drain fits in the stop grace.
    targets = [_volume(v)[1] for v in agent["volumes"]]
    assert str(settings.model.bundle) in targets
    assert int(agent["stop_grace_period"].rstrip("s")) > settings.lifecycle.shutdown_grace_seconds
    assert agent["read_only"] is True and "/tmp" in agent["tmpfs"]


def test_compose_prometheus_and_grafana_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    services = compose["services"]
    settings = _settings_with_env(_env_list(services["anomaly-agent"]["environment"]), monkeypatch)
    compose_dir = COMPOSE.parent

    prom = services["prometheus"]
    mounts = {_volume(v)[1]: (compose_dir / _volume(v)[0]).resolve() for v in prom["volumes"]}
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    prom_config = yaml.safe_load(mounts[config_path].read_text())
    (job,) = [j for j in prom_config["scrape_configs"] if j["job_name"] == "anomaly-agent"]
    assert f"anomaly-agent:{settings.metrics.port}" in job["static_configs"][0]["targets"]
    for rule_file in prom_config["rule_files"]:
        assert str(Path(config_path).parent / rule_file) in mounts, rule_file

    grafana = services["grafana"]
    gmounts = {_volume(v)[1]: (compose_dir / _volume(v)[0]).resolve() for v in grafana["volumes"]}
    provider = yaml.safe_load(
        (gmounts["/etc/grafana/provisioning/dashboards"] / "anomaly-agent.yaml").read_text()
    )
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert (gmounts[dashboards_dir] / "anomaly-agent.json").is_file()
    for host_path in [*mounts.values(), *gmounts.values()]:
        assert host_path.exists(), host_path
