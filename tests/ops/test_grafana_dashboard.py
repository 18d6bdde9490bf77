"""deploy/grafana: the committed dashboard JSON is exactly what the SDK code generates, it has
the panels the issue asks for, and its queries use only series the agent exports."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import yaml
from ops_tools import DEPLOY

from exporters.metrics import AgentMetrics

GRAFANA = DEPLOY / "grafana"
COMMITTED = GRAFANA / "dashboards" / "anomaly-agent.json"
REQUIRED_SERIES = {
    "anomaly_agent_events_consumed_total",
    "anomaly_agent_events_processed_total",
    "anomaly_agent_events_dead_lettered_total",
    "anomaly_agent_alerts_published_total",
    "anomaly_agent_anomaly_score_bucket",
    "anomaly_agent_stage_duration_seconds_bucket",
    "anomaly_agent_event_lag_seconds_bucket",
    "anomaly_agent_consumer_lag_messages",
    "anomaly_agent_batch_size_bucket",
    "anomaly_agent_model_info",
    "up",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("anomaly_agent_dashboard", GRAFANA / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(COMMITTED.read_text())["panels"] if p["type"] != "row"]


def _exported_series() -> set[str]:
    """Every sample name the agent's registry exposes (histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in AgentMetrics(batch_max_size=64).registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_committed_json_is_generated() -> None:
    generated = _generator().render()
    assert COMMITTED.read_text() == generated, "run: .venv/bin/python deploy/grafana/dashboard.py"


def test_dashboard_identity_and_datasource_variable() -> None:
    board = json.loads(COMMITTED.read_text())
    assert board["uid"] == "kafka-anomaly-agent"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_cover_the_issue() -> None:
    panels = _panels()
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    used = set(re.findall(r"\b(anomaly_agent_\w+|up)\{", exprs))
    assert used >= REQUIRED_SERIES, REQUIRED_SERIES - used
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["targets"][0]["format"] == "heatmap"
    threshold_lines = [
        p
        for p in panels
        if p["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line"
    ]
    steps = threshold_lines[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 1.0]
    stage = next(p for p in panels if "stage" in p["title"].lower())
    assert {t["legendFormat"] for t in stage["targets"]} == {"{{stage}} p50", "{{stage}} p99"}


def test_queries_use_only_exported_series() -> None:
    exported = _exported_series() | {"up"}
    exprs = [t["expr"] for p in _panels() for t in p["targets"]]
    board = json.loads(COMMITTED.read_text())
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"\b(anomaly_agent_\w+)", e)}
    assert used <= exported, f"not exported by exporters.metrics: {used - exported}"


def test_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "anomaly-agent.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
