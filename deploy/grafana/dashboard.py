"""The agent's Grafana dashboard, built as code with Grafana's own SDK (grafana-foundation-sdk).

Run ``python deploy/grafana/dashboard.py`` after changing a panel: it rewrites
``deploy/grafana/dashboards/anomaly-agent.json``, the file Grafana provisioning and manual
imports use. tests/ops checks the committed JSON is exactly what this module generates, and that
every panel's query returns data from a real Prometheus scraping a running agent.

Queries select ``job="$job"`` and ``instance=~"$instance"``; the metric names are the contract of
issue 4 (prefix ``anomaly_agent_``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphTresholdsStyleMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "kafka-anomaly-agent"
OUTPUT = Path(__file__).resolve().parent / "dashboards" / "anomaly-agent.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job="$job", instance=~"$instance"'
RATE = "$__rate_interval"
PanelBuilder = timeseries.Panel | stat.Panel | table.Panel | heatmap.Panel
# The detector's decision threshold: scores are raw / calibrated threshold, so 1.0 always.
SCORE_THRESHOLD = 1.0


def _query(expr: str, legend: str = "", ref: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _timeseries(title: str, description: str, unit: str) -> timeseries.Panel:
    return timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)


def _quantiles(metric: str, by: str, legend: str) -> list[Builder[Dataquery]]:
    group = f"le, {by}" if by else "le"
    return [
        _query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"{legend} p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.99, "B"))
    ]


def _instances_up() -> stat.Panel:
    up_down = ValueMap(
        options={
            "0": ValueMappingResult(text="DOWN", color="red", index=0),
            "1": ValueMappingResult(text="UP", color="green", index=1),
        }
    )
    return (
        stat.Panel()
        .title("Instances up")
        .description("Prometheus scrape status per agent instance (up), and whether it reports ready.")
        .datasource(DATASOURCE)
        .with_target(_query(f"up{{{SEL}}}", "{{instance}} scrape"))
        .with_target(_query(f"anomaly_agent_ready{{{SEL}}}", "{{instance}} ready", "B"))
        .mappings([up_down])
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .span(8)
        .height(5)
    )


def _model_info() -> table.Panel:
    return (
        table.Panel()
        .title("Model in use")
        .description(
            "anomaly_agent_model_info per instance: the bundle's model id, manifest sha256 and detector."
        )
        .datasource(DATASOURCE)
        .with_target(
            _query(f"max by (instance, model_id, sha256, detector) (anomaly_agent_model_info{{{SEL}}})")
            .instant()
            .format(PromQueryFormat.TABLE)
        )
        .span(16)
        .height(5)
    )


def _events() -> timeseries.Panel:
    return (
        _timeseries(
            "Events per second", "Read from the input topics, scored, and dead-lettered (by reason).", "ops"
        )
        .with_target(
            _query(f"sum(rate(anomaly_agent_events_consumed_total{{{SEL}}}[{RATE}]))", "consumed", "A")
        )
        .with_target(
            _query(f"sum(rate(anomaly_agent_events_processed_total{{{SEL}}}[{RATE}]))", "processed", "B")
        )
        .with_target(
            _query(
                f"sum by (reason) (rate(anomaly_agent_events_dead_lettered_total{{{SEL}}}[{RATE}]))",
                "dead-lettered: {{reason}}",
                "C",
            )
        )
        .span(12)
    )


def _alerts() -> timeseries.Panel:
    return (
        _timeseries(
            "Alerts per second", "Alerts published to the alert topic (score above the threshold).", "ops"
        )
        .with_target(
            _query(
                f"sum by (instance) (rate(anomaly_agent_alerts_published_total{{{SEL}}}[{RATE}]))",
                "{{instance}}",
            )
        )
        .span(12)
    )


def _pattern_hits() -> timeseries.Panel:
    return (
        _timeseries(
            "Pattern hit ratio",
            "Share of events scored from the pattern table (their prepared text was seen before: no "
            "embedding). Near 1 for log streams; low for unique prose. Evictions mean the table is full.",
            "percentunit",
        )
        .with_target(
            _query(
                f'sum(rate(anomaly_agent_pattern_lookups_total{{{SEL}, result="hit"}}[{RATE}])) / '
                f"sum(rate(anomaly_agent_pattern_lookups_total{{{SEL}}}[{RATE}]))",
                "hit ratio",
                "A",
            )
        )
        .span(12)
    )


def _pattern_table() -> timeseries.Panel:
    return (
        _timeseries(
            "Patterns in the table",
            "Distinct prepared texts the table holds, per instance, and evictions per second.",
            "short",
        )
        .with_target(_query(f"sum by (instance) (anomaly_agent_patterns{{{SEL}}})", "{{instance}}", "A"))
        .with_target(
            _query(f"sum(rate(anomaly_agent_pattern_evictions_total{{{SEL}}}[{RATE}]))", "evictions/s", "B")
        )
        .span(12)
    )


def _alert_grouping() -> timeseries.Panel:
    return (
        _timeseries(
            "Alerts, summaries, suppressed and muted",
            "What reached people (alerts and summaries published) against what grouping counted "
            "instead of alerting (suppressed: one alert per pattern and partition per cooldown) and "
            "what operators muted (feedback verdict normal), per second.",
            "short",
        )
        .with_target(
            _query(f"sum(rate(anomaly_agent_alerts_published_total{{{SEL}}}[{RATE}]))", "published", "A")
        )
        .with_target(
            _query(
                f"sum(rate(anomaly_agent_alert_summaries_published_total{{{SEL}}}[{RATE}]))", "summaries", "B"
            )
        )
        .with_target(
            _query(f"sum(rate(anomaly_agent_alerts_suppressed_total{{{SEL}}}[{RATE}]))", "suppressed", "C")
        )
        .with_target(_query(f"sum(rate(anomaly_agent_alerts_muted_total{{{SEL}}}[{RATE}]))", "muted", "D"))
        .span(12)
    )


def _alert_groups() -> timeseries.Panel:
    return (
        _timeseries(
            "Open windows and muted patterns",
            "Cooldown windows open per instance (a pattern that alerted on a partition within the "
            "cooldown: its further events are counted for the summary) and patterns muted by feedback.",
            "short",
        )
        .with_target(
            _query(f"sum by (instance) (anomaly_agent_alert_groups_open{{{SEL}}})", "{{instance}}", "A")
        )
        .with_target(_query(f"max(anomaly_agent_patterns_muted{{{SEL}}})", "muted patterns", "B"))
        .span(12)
    )


def _rate_alerts() -> timeseries.Panel:
    return (
        _timeseries(
            "Rate alerts: spikes and silences",
            "Rate alerts published per second, by kind: spike (a known pattern far above its rate "
            "baseline; one per key and cooldown, further spiking buckets go into its summary) and "
            "silence (a steady pattern that stopped; one per episode). docs/rates.md.",
            "short",
        )
        .with_target(
            _query(f"sum by (kind) (rate(anomaly_agent_rate_alerts_total{{{SEL}}}[{RATE}]))", "{{kind}}", "A")
        )
        .span(12)
    )


def _rate_keys() -> timeseries.Panel:
    return (
        _timeseries(
            "Rate keys",
            "Keys (pattern and [rates] key_fields per input partition) with a rate baseline, per "
            "instance; at most [rates] max_keys per partition, least recently seen evicted.",
            "short",
        )
        .with_target(_query(f"sum by (instance) (anomaly_agent_rate_keys{{{SEL}}})", "{{instance}}", "A"))
        .span(12)
    )


def _session_alerts() -> timeseries.Panel:
    return (
        _timeseries(
            "Sessions closed and session alerts",
            "Sessions closed per second by reason (gap: inactive for [sessions] gap_seconds; "
            "max_seconds / max_events: a cap; evicted: max_open reached, closed early) and session "
            "alerts published per second (a decisive step, or an anomalous close; sessions failing "
            "alike are one alert per cooldown). docs/sessions.md.",
            "short",
        )
        .with_target(
            _query(
                f"sum by (reason) (rate(anomaly_agent_sessions_closed_total{{{SEL}}}[{RATE}]))",
                "closed: {{reason}}",
                "A",
            )
        )
        .with_target(_query(f"sum(rate(anomaly_agent_session_alerts_total{{{SEL}}}[{RATE}]))", "alerts", "B"))
        .with_target(
            _query(f"sum(rate(anomaly_agent_session_keys_split_total{{{SEL}}}[{RATE}]))", "keys split", "C")
        )
        .span(12)
    )


def _sessions_open() -> timeseries.Panel:
    return (
        _timeseries(
            "Open sessions",
            "Sessions open per instance (at most [sessions] max_open per input partition, about "
            "1.5 KB each).",
            "short",
        )
        .with_target(_query(f"sum by (instance) (anomaly_agent_sessions_open{{{SEL}}})", "{{instance}}", "A"))
        .span(12)
    )


def _kafka_faults() -> timeseries.Panel:
    return (
        _timeseries(
            "Kafka transactions and client faults",
            "Aborted transactions (the batch was rewound and retried), Kafka calls that hung past their "
            "deadline, and producers replaced (fatal error, hung call, or after a broker outage), per 5 min.",
            "short",
        )
        .with_target(
            _query(
                f'sum(increase(anomaly_agent_transactions_total{{{SEL}, result="aborted"}}[5m]))',
                "transactions aborted",
                "A",
            )
        )
        .with_target(
            _query(
                f"sum by (call) (increase(anomaly_agent_kafka_calls_hung_total{{{SEL}}}[5m]))",
                "hung: {{call}}",
                "B",
            )
        )
        .with_target(
            _query(
                f"sum by (reason) (increase(anomaly_agent_producers_replaced_total{{{SEL}}}[5m]))",
                "producer replaced: {{reason}}",
                "C",
            )
        )
        .span(24)
    )


def _score_heatmap() -> heatmap.Panel:
    return (
        heatmap.Panel()
        .title(f"Anomaly score distribution (threshold {SCORE_THRESHOLD})")
        .description(
            "Events per score bucket over time. Scores are raw / calibrated threshold: rows above 1.0 "
            "are alerts; mass creeping towards 1.0 means the input drifts away from the training data."
        )
        .datasource(DATASOURCE)
        .with_target(
            _query(
                f"sum by (le) (increase(anomaly_agent_anomaly_score_bucket{{{SEL}}}[{RATE}]))", "{{le}}"
            ).format(PromQueryFormat.HEATMAP)
        )
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("none").decimals(2))
        .span(12)
        .height(9)
    )


def _score_quantiles() -> timeseries.Panel:
    return (
        _timeseries(
            "Anomaly score quantiles vs threshold",
            f"Median and p99 score; the red line is the decision threshold {SCORE_THRESHOLD}.",
            "none",
        )
        .targets(_quantiles("anomaly_agent_anomaly_score", "", "score"))
        .thresholds(
            dash.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="green"), Threshold(value=SCORE_THRESHOLD, color="red")])
        )
        .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE))
        .span(12)
        .height(9)
    )


def _stage_latency() -> timeseries.Panel:
    return (
        _timeseries("Per-stage latency p50 / p99", "Wall time per batch in each loop stage.", "s")
        .targets(_quantiles("anomaly_agent_stage_duration_seconds", "stage", "{{stage}}"))
        .span(12)
    )


def _event_lag() -> timeseries.Panel:
    return (
        _timeseries("End-to-end event lag", "Now minus the record's Kafka timestamp, when scored.", "s")
        .targets(_quantiles("anomaly_agent_event_lag_seconds", "", "event lag"))
        .span(12)
    )


def _consumer_lag() -> timeseries.Panel:
    return (
        _timeseries(
            "Consumer lag per partition",
            "Messages behind the high watermark (librdkafka statistics), per assigned partition.",
            "short",
        )
        .with_target(
            _query(
                f"max by (topic, partition) (anomaly_agent_consumer_lag_messages{{{SEL}}})",
                "{{topic}}/{{partition}}",
            )
        )
        .span(12)
    )


def _batch_sizes() -> timeseries.Panel:
    return (
        _timeseries(
            "Batch size", "Events per scored batch: mean and p99 (micro-batches by size and wait).", "short"
        )
        .with_target(
            _query(
                f"sum(rate(anomaly_agent_batch_size_sum{{{SEL}}}[{RATE}])) / "
                f"sum(rate(anomaly_agent_batch_size_count{{{SEL}}}[{RATE}]))",
                "mean",
                "A",
            )
        )
        .with_target(
            _query(
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(anomaly_agent_batch_size_bucket{{{SEL}}}[{RATE}])))",
                "p99",
                "B",
            )
        )
        .span(12)
    )


def build() -> dash.Dashboard:
    datasource = dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    job = (
        dash.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(anomaly_agent_build_info, job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    instance = (
        dash.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query('label_values(anomaly_agent_build_info{job="$job"}, instance)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    board = (
        dash.Dashboard("Kafka anomaly agent")
        .uid(UID)
        .description("kafka-anomaly-agent: throughput, alerts, scores, latency, lag and the model in use.")
        .tags(["kafka", "anomaly-detection"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(datasource)
        .with_variable(job)
        .with_variable(instance)
    )
    layout: list[tuple[str, list[PanelBuilder]]] = [
        ("Health", [_instances_up(), _model_info()]),
        ("Throughput", [_events(), _alerts()]),
        ("Scores", [_score_heatmap(), _score_quantiles()]),
        ("Latency and lag", [_stage_latency(), _event_lag(), _consumer_lag(), _batch_sizes()]),
        ("Kafka", [_kafka_faults()]),
        # New rows go last: panel ids are positions, and Grafana keys links and state on them.
        ("Patterns", [_pattern_hits(), _pattern_table()]),
        ("Alert grouping", [_alert_grouping(), _alert_groups()]),
        ("Pattern rates", [_rate_alerts(), _rate_keys()]),
        ("Sessions", [_session_alerts(), _sessions_open()]),
    ]
    # Stable ids (1, 2, ...): Grafana keys panel links and per-panel state on them.
    next_id = 1
    for row_title, panels in layout:
        board.with_row(dash.Row(row_title).id(next_id))
        next_id += 1
        for panel in panels:
            board.with_panel(panel.id(next_id))
            next_id += 1
    return board


def render() -> str:
    """The dashboard JSON exactly as committed (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUTPUT
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
