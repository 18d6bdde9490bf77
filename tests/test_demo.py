"""The README's first command: the demo's shipped data, and the demo itself end to end.

The end-to-end test runs ``anomaly-agent demo --exit-after-replay`` as a user would (a separate
process) against the session's real broker: it trains the demo bundle, starts ``anomaly-agent
run``, replays the 500-event sample and must see an alert for every anomalous one (or for its
pattern, with a summary counting it), a dead letter for every malformed one, the history's spike
and silence, one session alert for the request session that never logs its last step (and none for
the complete ones), and the agent exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import load_demo
from agent.cli import main as cli_main
from agent.config import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


demo = load_demo()
STREAM_FILE, Tally, load_stream = demo.STREAM_FILE, demo.Tally, demo.load_stream


def test_shipped_sample_data_is_what_the_generator_makes() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deploy" / "demo" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_every_prefix_of_the_stream_holds_anomalies_and_cycles_past_its_end() -> None:
    whole = load_stream(STREAM_FILE, None)
    prefix = load_stream(STREAM_FILE, 50)
    assert [r.label for r in prefix] == [r.label for r in whole[:50]]
    assert sum(r.label == "anomaly" for r in prefix) >= 2
    longer = load_stream(STREAM_FILE, len(whole) + 3)
    assert longer[len(whole) :] == whole[:3]


def test_requests_hold_one_session_without_its_end_that_closes_within_the_replay() -> None:
    settings = load_settings(demo.CONFIG_FILE)
    assert settings.sessions.enabled and settings.sessions.key_pattern is not None
    requests = demo.load_history(demo.REQUESTS_FILE)
    keys = demo.session_keys(requests, settings.sessions.key_pattern)
    assert len(keys) >= 5 and sorted(keys.values()).count("broken") == 1
    (broken,) = (k for k, label in keys.items() if label == "broken")
    steps: dict[str, list[str]] = {}
    for record in requests:
        key, _, step = str(record.value["message"]).removeprefix("request ").partition(" ")
        steps.setdefault(key, []).append(step)
    assert all(s[-1] == "done" for k, s in steps.items() if k != broken)
    assert "done" not in steps[broken] and steps[broken][0].startswith("start")
    # The partition's event time (the running maximum of the records' times) passes the broken
    # session's last line + the gap within the file: the agent closes it at a known record.
    last = max(r.at_ms for r in requests if r.label == "broken")
    assert settings.sessions.gap_seconds is not None
    assert max(r.at_ms for r in requests) >= last + settings.sessions.gap_seconds * 1000
    # The bundle is trained with the key and gap the agent runs with (start-up refuses others).
    flags = demo.train_flags(settings)
    assert flags[flags.index("--session-key-pattern") + 1] == settings.sessions.key_pattern
    assert float(flags[flags.index("--session-gap-seconds") + 1]) == settings.sessions.gap_seconds


def test_tally_maps_alerts_to_the_events_they_came_from() -> None:
    records = load_stream(STREAM_FILE, 40)
    tally = Tally()
    tally.by_offset = dict(enumerate(records))
    anomalous = [o for o, r in tally.by_offset.items() if r.label == "anomaly"]
    normal = next(o for o, r in tally.by_offset.items() if r.label == "normal")
    tally.alerts = {anomalous[0]: 2.0, normal: 1.2}
    summary = tally.summary()
    assert summary["anomalies_alerted"] == 1
    assert summary["anomalies_missed_offsets"] == anomalous[1:]
    assert summary["false_positive_offsets"] == [normal]


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--events", "0"], "--events must be at least 1"), (["--rate", "-1"], "--rate must be 0")],
)
def test_bad_demo_flags_are_refused_before_anything_starts(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["demo", "--state-dir", str(tmp_path / "state"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_bounded_demo_alerts_on_the_anomalies_and_stops_cleanly(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = dict(os.environ, ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "agent.cli", "demo", "--events", "500", "--rate", "0"]
    command += ["--exit-after-replay", "--state-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output

    summary = json.loads((tmp_path / "summary.json").read_text())
    sent = summary["events_sent_by_label"]
    assert summary["events_sent"] == 500
    assert sent["anomaly"] >= 10
    assert summary["all_processed"] is True
    assert summary["agent_exit_code"] == 0
    assert summary["delivery_errors"] == []
    # Every anomalous event raised an alert or was counted under its pattern's alert (grouping:
    # one alert per pattern and cooldown); the threshold is calibrated to ~1 % false positives.
    assert summary["anomalies_missed_offsets"] == [], output
    assert summary["anomalies_alerted"] + summary["anomalies_grouped"] == sent["anomaly"]
    # Every event a window counted came out in a summary before the demo stopped.
    suppressed = summary["agent_counters"]["anomaly_agent_alerts_suppressed_total"]
    assert summary["events_in_summaries"] == suppressed
    # The whole sample repeats some anomalies within the demo's 20 s cooldown: grouped, summarised.
    assert summary["anomalies_grouped"] >= 5 and summary["summaries_received"] >= 5, output
    assert "SUMMARY" in done.stdout
    assert len(summary["false_positive_offsets"]) <= max(2, sent["normal"] // 20), output
    # Malformed records are dead-lettered with a reason, not dropped.
    assert summary["malformed_not_dead_lettered_offsets"] == []
    assert summary["dead_letters_received"] == sent.get("malformed", 0) >= 1
    # What the user sees: alerts as they arrive, where the metrics are, the summary.
    assert "ALERT" in done.stdout
    assert summary["metrics_url"] in done.stdout
    assert "alerts received" in done.stdout
    # The history: one spike (the stampede's line) and one silence (the heartbeat), nothing else.
    assert summary["rate_alerts_received"] == summary["rate_alerts_expected"] == {"spike": 1, "silence": 1}
    assert summary["rate_alert_templates"]["spike"][0].startswith("Cache miss for key product:")
    assert summary["rate_alert_templates"]["silence"][0].startswith("Connection pool stats:")
    assert "SPIKE" in done.stdout and "SILENCE" in done.stdout
    # The request sessions: one alert (kind "session"), for the one that never says done, closed
    # by its gap; none for the complete ones.
    assert summary["request_sessions_sent"] >= 5
    assert len(summary["session_alerts_expected"]) == 1
    assert summary["session_alert_keys"] == summary["session_alerts_expected"], output
    (session,) = summary["session_alerts"]
    assert session["reason"] == "gap" and session["score"] > 1.0
    assert "expected" in session["text"] and "done" in session["text"]
    assert "SESSION" in done.stdout and "session alerts     1" in done.stdout
    # The agent's own counters agree with what the read_committed reader saw.
    counters = summary["agent_counters"]
    rate_alerts = sum(summary["rate_alerts_received"].values())
    published = (
        summary["alerts_received"]
        + summary["summaries_received"]
        + rate_alerts
        + summary["session_alerts_received"]
    )
    assert counters["anomaly_agent_alerts_published_total"] == published
    assert counters["anomaly_agent_session_alerts_total"] == 1
    consumed = 500 + summary["history_events_sent"] + summary["request_events_sent"]
    assert counters["anomaly_agent_events_consumed_total"] == consumed
