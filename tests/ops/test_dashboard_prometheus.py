"""Every panel of the Grafana dashboard shows data from a real Prometheus (Debian's server)
scraping a real agent that processes traffic on the real broker.

The agent runs ``anomaly-agent run`` with a bundle from ``anomaly-agent train``; the traffic mixes
normal events, anomalies and every kind of bad input. Prometheus scrapes it every second and also
loads deploy/prometheus/rules.yml (the rules must evaluate without errors against live series).
Each panel query is taken from the committed dashboard JSON, with the dashboard variables
replaced as Grafana would ($job, $instance = All, $__rate_interval for a 1 s scrape interval).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from agent_harness import (
    AgentConfig,
    free_port,
    produce,
    running_agent,
    traffic,
    wait_until_ready,
    write_config,
)
from ops_tools import DEPLOY, OpsTools

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "anomaly-agent.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
JOB = "anomaly-agent"
SCRAPE_INTERVAL_S = 1
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval: at least four scrape intervals
# Panels whose every series is a rate of events: at least one must be above zero.
RATE_PANELS = {"Events per second", "Alerts per second"}
WAVES = 4
EVENTS_PER_WAVE = 80


def _substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace('instance=~"$instance"', 'instance=~".*"')
        .replace("$job", JOB)
    )


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def scalar(self, expr: str) -> float:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture
def prometheus_for(ops_tools: OpsTools, tmp_path: Path) -> Iterator[Callable[[AgentConfig], Prometheus]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: AgentConfig) -> Prometheus:
        port = free_port()
        prom_config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{config.metrics_port}"]}]}
            ],
        }
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(prom_config))
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    ops_tools.prometheus,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return Prometheus(url)
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prometheus not ready:\n{(tmp_path / 'prometheus.log').read_text()}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def _finite(values: list[list[Any]]) -> list[float]:
    return [float(v) for _, v in values if math.isfinite(float(v))]


def _describe(result: list[dict[str, Any]]) -> str:
    parts = []
    for series in result:
        labels = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()) if k != "__name__") or "-"
        values = _finite(series["values"]) if "values" in series else _finite([series["value"]])
        if values:
            parts.append(f"{labels}: last {values[-1]:.4g} max {max(values):.4g} ({len(values)} pts)")
        else:
            parts.append(f"{labels}: no finite value")
    return "; ".join(parts)


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_every_panel_returns_data(
    delivery: str,
    prometheus_for: Callable[[AgentConfig], Prometheus],
    ops_bundle: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        bootstrap=kafka_bootstrap,
        group=make_group(),
        bundle=ops_bundle,
        input_topic=make_topic(partitions=2),
        alerts_topic=make_topic(),
        dead_letter_topic=make_topic(),
        delivery=delivery,
    )
    log = tmp_path / "agent.log"
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]

    with running_agent(config, log) as proc:
        wait_until_ready(config, proc, log)
        prom = prometheus_for(config)
        start = time.time()
        total = 0
        for wave in range(WAVES):
            produce(kafka_bootstrap, config.input_topic, traffic(datasets_dir, EVENTS_PER_WAVE, seed=wave))
            total += EVENTS_PER_WAVE
            time.sleep(3)
        # Wait until Prometheus has seen the agent consume everything, then a few more scrapes.
        deadline = time.monotonic() + 180
        consumed = 0.0
        while time.monotonic() < deadline:
            consumed = prom.scalar(f'sum(anomaly_agent_events_consumed_total{{job="{JOB}"}})')
            if consumed >= total:
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(1)
        assert consumed >= total, f"Prometheus saw {consumed} of {total} events consumed:\n{log.read_text()}"
        time.sleep(4 * SCRAPE_INTERVAL_S)
        end = time.time()

        report: dict[str, list[str]] = {}
        empty: list[str] = []
        for panel in panels:
            for target in panel["targets"]:
                expr = _substitute(target["expr"])
                assert "$" not in expr, f"unsubstituted variable in {expr}"
                if target.get("instant"):
                    result = prom.api("query", query=expr, time=end)["result"]
                    finite = [v for s in result for v in _finite([s["value"]])]
                else:
                    result = prom.api(
                        "query_range", query=expr, start=start, end=end, step=SCRAPE_INTERVAL_S
                    )["result"]
                    finite = [v for s in result for v in _finite(s["values"])]
                key = f"{panel['title']} [{target['refId']}]"
                report[key] = [expr, _describe(result)]
                if not finite:
                    empty.append(f"{key}: {expr}")
                elif panel["title"] in RATE_PANELS and target["refId"] in ("A", "B"):
                    assert max(finite) > 0, f"{key} stayed at 0: {expr}"

        # Dashboard variables: label_values(anomaly_agent_build_info, job / instance)
        jobs = prom.api("label/job/values", **{"match[]": "anomaly_agent_build_info"})
        instances = prom.api(
            "label/instance/values", **{"match[]": f'anomaly_agent_build_info{{job="{JOB}"}}'}
        )
        # The alert rules load and evaluate against the live series without errors.
        groups = prom.api("rules")["groups"]

    print("\npanel queries on a real Prometheus:")
    for key, (expr, description) in report.items():
        print(f"  {key}\n    {expr}\n    -> {description}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    stage_series = report["Per-stage latency p50 / p99 [A]"][1]
    for stage in ("decode", "embed", "score", "publish", "commit"):
        assert f"stage={stage}:" in stage_series, f"no p50 for stage {stage}: {stage_series}"
    dead = report["Events per second [C]"][1]
    for reason in ("invalid_utf8", "invalid_json", "not_an_object", "missing_text", "too_large"):
        assert f"reason={reason}:" in dead, dead

    assert jobs == [JOB]
    assert instances == [f"127.0.0.1:{config.metrics_port}"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
