"""deploy/kubernetes: the kustomize base and the example overlay render with the real kustomize,
every object validates offline against its schema (core kinds: the Kubernetes OpenAPI schemas in
kubernetes-validate, strict; ServiceMonitor/ScaledObject/TriggerAuthentication: the models
cloudcoil generates from those projects' CRD schemas), and the objects agree with each other and
with the agent's settings model."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from ops_tools import DEPLOY, OpsTools
from pydantic import BaseModel

from agent.config import Settings, load_settings

K8S = DEPLOY / "kubernetes"
TARGETS = {"base": K8S / "base", "example": K8S / "overlays" / "example"}
# The oldest Kubernetes minor still in upstream support when this was written, and the newest
# schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.31", kubernetes_validate.latest_version())
CRD_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}

Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def render(ops_tools: OpsTools) -> Callable[[str], Docs]:
    cache: dict[str, Docs] = {}

    def _render(target: str) -> Docs:
        if target not in cache:
            proc = subprocess.run(
                [*ops_tools.kustomize, str(TARGETS[target])], capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr
            cache[target] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return copy.deepcopy(cache[target])

    return _render


def _one(docs: Docs, kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _crd_errors(doc: dict[str, Any]) -> str | None:
    """Validate a custom resource with the model generated from its CRD schema.

    The models ignore unknown keys, so the document must also survive a round trip unchanged:
    a misspelt field (``maxReplicas``) is dropped by the model and shows up as a difference.
    """
    model = CRD_MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        return f"no schema for {doc['apiVersion']} {doc['kind']}"
    try:
        parsed = model.model_validate(doc)
    except ValueError as exc:
        return str(exc)
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if dumped != doc:
        return f"fields unknown to the {doc['kind']} schema: round trip gave {dumped}"
    return None


def _validate(doc: dict[str, Any], version: str) -> str | None:
    if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
        return _crd_errors(doc)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
        return str(exc)
    return None


def _settings_in_pod(docs: Docs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the agent builds in the pod: the ConfigMap's TOML plus the container's
    environment, through ``load_settings`` itself. ``valueFrom`` entries come from Secrets or the
    API at run time; fixed stand-ins here."""
    configmap = _one(docs, "ConfigMap")
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for name in [n for n in os.environ if n.startswith("ANOMALY_AGENT_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for var in container.get("env", []):
        monkeypatch.setenv(var["name"], var.get("value", f"from-{var['name'].lower()}"))
    config = tmp_path / "agent.toml"
    config.write_text(configmap["data"]["agent.toml"])
    return load_settings(config)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates(render: Callable[[str], Docs], target: str, version: str) -> None:
    docs = render(target)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "ConfigMap",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ScaledObject",
    } <= kinds
    errors = {f"{d['kind']}/{d['metadata']['name']}": _validate(d, version) for d in docs}
    assert not {k: v for k, v in errors.items() if v}, errors


def test_validation_can_fail(render: Callable[[str], Docs]) -> None:
    docs = render("base")
    deployment = _one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # typo
    assert _validate(deployment, KUBE_VERSIONS[-1]) is not None
    scaled = _one(docs, "ScaledObject")
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert _validate(scaled, KUBE_VERSIONS[-1]) is not None
    scaled = _one(render("base"), "ScaledObject")
    scaled["spec"]["minReplicaCount"] = "one"
    assert _validate(scaled, KUBE_VERSIONS[-1]) is not None


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_pod_meets_restricted_security(render: Callable[[str], Docs], target: str) -> None:
    pod = _one(render(target), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert "requests" in container["resources"] and "limits" in container["resources"]
    agent = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in agent["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_probes_ports_and_drain_match_the_settings(
    render: Callable[[str], Docs], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(target)
    settings = _settings_in_pod(docs, tmp_path, monkeypatch)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}

    # Listeners face the pod network, on the ports the container declares.
    assert settings.metrics.host == "0.0.0.0" and settings.health.host == "0.0.0.0"
    assert settings.instance_id == "from-anomaly_agent_instance_id"  # the pod name, via the API
    assert settings.kafka.sasl_password is not None
    assert ports["metrics"] == settings.metrics.port
    assert ports["health"] == settings.health.port

    # Liveness is loop progress only; readiness includes the broker.
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["port"] in ("health", settings.health.port)
    # The kubelet must not kill a loop that is slow but within health.stall_seconds.
    liveness = agent["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= settings.health.stall_seconds / 2

    assert pod["terminationGracePeriodSeconds"] > settings.lifecycle.shutdown_grace_seconds + 10

    # The config and the bundle are where the settings look for them.
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert agent["args"] == ["run", "--config", "/etc/anomaly-agent/agent.toml"]
    assert "/etc/anomaly-agent" in mounts
    assert str(settings.model.bundle) in mounts
    init = pod["initContainers"][0]
    assert str(settings.model.bundle) in {m["mountPath"] for m in init["volumeMounts"]}
    assert settings.model.intra_op_threads <= float(agent["resources"]["limits"]["cpu"])
    if settings.kafka.ssl_ca_location is not None:
        assert any(settings.kafka.ssl_ca_location.is_relative_to(p) for p in mounts)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_service_monitor_pdb_and_scaler_point_at_the_agent(
    render: Callable[[str], Docs], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(target)
    settings = _settings_in_pod(docs, tmp_path, monkeypatch)
    deployment = _one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"metrics"}
    assert service["spec"]["publishNotReadyAddresses"] is True  # scrape unready agents too

    monitor = _one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # rules.yml and the dashboard select job="anomaly-agent"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "anomaly-agent"

    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    scaled = _one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = int(scaled["metadata"]["annotations"]["kafka-anomaly-agent/input-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == settings.kafka.group_id
    assert trigger["metadata"]["topic"] in settings.topics.input
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka.bootstrap_servers
    if settings.kafka.security_protocol.startswith("SASL"):
        auth = trigger["authenticationRef"]["name"]
        assert auth in {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}


def test_prometheus_rule_is_rules_yml(render: Callable[[str], Docs]) -> None:
    """The PrometheusRule carries exactly deploy/prometheus/rules.yml (regenerate with
    deploy/prometheus/prometheusrule.py), and its file is what that script writes."""
    rule = _one(render("base"), "PrometheusRule")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == rules["groups"]
    spec = importlib.util.spec_from_file_location(
        "prometheusrule_gen", DEPLOY / "prometheus" / "prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (K8S / "base" / "prometheusrule.yaml").read_text() == module.render()
