"""Write deploy/kubernetes/base/prometheusrule.yaml: rules.yml wrapped in a Prometheus Operator
``PrometheusRule``, so operator-managed Prometheus loads the same alerts the ServiceMonitor's
series feed. rules.yml stays the one source; tests/ops fails when the two differ.

    .venv/bin/python deploy/prometheus/prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
OUTPUT = HERE.parent / "kubernetes" / "base" / "prometheusrule.yaml"
HEADER = "# Generated from deploy/prometheus/rules.yml by deploy/prometheus/prometheusrule.py; do not edit.\n"


def build() -> dict[str, Any]:
    rules = yaml.safe_load(RULES.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "anomaly-agent"},
        "spec": {"groups": rules["groups"]},
    }


def render() -> str:
    return HEADER + yaml.safe_dump(build(), sort_keys=False, width=100)


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
