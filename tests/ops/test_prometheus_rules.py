"""deploy/prometheus: the alerting rules pass `promtool check rules` and their unit tests
(`promtool test rules`), and the scrape config is valid for the real Prometheus."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from ops_tools import DEPLOY, OpsTools

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules.yml"

# The list of conditions an operator must be paged or warned about.
REQUIRED_ALERTS = {
    "AnomalyAgentDown",
    "AnomalyAgentNoProgress",
    "AnomalyAgentDeadLetterRateHigh",
    "AnomalyAgentAlertStorm",
    "AnomalyAgentModelStale",
    "AnomalyAgentConsumerLagHigh",
}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_rules_check(ops_tools: OpsTools) -> None:
    proc = _run([ops_tools.promtool, "check", "rules", str(RULES)], PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_unit_tests_pass(ops_tools: OpsTools) -> None:
    proc = _run([ops_tools.promtool, "test", "rules", "rules_test.yml"], PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    tests = yaml.safe_load((PROM / "rules_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == alerts, f"alerts without a test that shows them firing: {alerts - fired}"


def test_unit_tests_catch_a_wrong_bound(ops_tools: OpsTools, tmp_path: Path) -> None:
    """The unit tests can fail: with the lag bound doubled, the lag test no longer sees its alert."""
    text = RULES.read_text()
    assert text.count("> 10000") == 1
    (tmp_path / "rules.yml").write_text(text.replace("> 10000", "> 20000"))
    (tmp_path / "rules_test.yml").write_text((PROM / "rules_test.yml").read_text())
    proc = _run([ops_tools.promtool, "test", "rules", "rules_test.yml"], tmp_path)
    assert proc.returncode != 0
    assert "AnomalyAgentConsumerLagHigh" in proc.stdout + proc.stderr


def test_scrape_config_check(ops_tools: OpsTools) -> None:
    proc = _run([ops_tools.promtool, "check", "config", "prometheus.yml"], PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    # rules.yml selects job="anomaly-agent"
    assert "anomaly-agent" in jobs


def test_rules_use_only_exported_series() -> None:
    """Every anomaly_agent_* name in the rules is one the agent's registry exports (histograms by
    their _bucket/_sum/_count samples): a renamed metric would silently disable an alert."""
    from exporters.metrics import AgentMetrics

    exported: set[str] = set()
    for family in AgentMetrics(batch_max_size=64).registry.collect():
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            exported.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    rules = yaml.safe_load(RULES.read_text())
    used = {
        name
        for g in rules["groups"]
        for r in g["rules"]
        for name in re.findall(r"\banomaly_agent_\w+", r["expr"])
    }
    assert used, "the rules select no agent series"
    assert used <= exported, f"not exported by exporters.metrics: {used - exported}"
