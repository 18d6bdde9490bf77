"""Sessions through ``Alerting`` without Kafka: a decisive step alerts at once and its close adds
nothing, an anomalous close alerts after the gap, sessions failing alike are one alert and a
summary, and batch splits, aborts and restarts change nothing."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from test_alerting import BUNDLE, NOW, Log, Row, scored
from test_session_tracker import PATHS, WINDOWS, P

from agent.alerts.alerting import Alerting, Scored
from agent.config import ConfigError, load_settings
from agent.model.patterns import PatternScore
from agent.model.sessions import SessionModel, SessionSequence
from exporters.metrics import AgentMetrics

NORMAL = PatternScore(0.3, 0.1, -1)


@pytest.fixture(scope="module")
def model() -> SessionModel:
    rng = random.Random(0)
    sessions = [SessionSequence(tuple(P[n] for n in rng.choice(PATHS))) for _ in range(400)]
    return SessionModel.fit(
        sessions, windows=WINDOWS, templates={h: f"request {n} <NUM>" for n, h in P.items()}
    )


def alerting(model: SessionModel | None, **sessions: Any) -> Alerting:
    settings = load_settings(
        alerts={"group_by": "pattern", "cooldown_seconds": 600.0},
        rates={"enabled": False},
        sessions={"enabled": True, "key_pattern": r"\b(req-\d+)\b"} | sessions,
    )
    agent = Alerting(settings, metrics=AgentMetrics(), verdicts=None)
    agent.use_session_model(model)
    return agent


def step(offset: int, ts: int, session: str, name: str, partition: int = 0) -> Scored:
    return scored(
        "events",
        partition,
        offset,
        None,
        ts,
        f"request {name} {offset} {session}",
        f"request {name} <NUM>",
        {},
        NORMAL,
    )


def traffic(seed: int, sessions: int = 60) -> list[Row]:
    """Interleaved request sessions 2 s apart, each step 1 s after the last: normal paths, two
    that never reach "done" (the same failure) and one that panics (an unseen step)."""
    rng = random.Random(seed)
    bad = {
        10: ("start", "auth", "db"),
        25: ("start", "auth", "db"),
        40: ("start", "auth", "panic", "db", "done"),
    }
    events: list[tuple[int, str, str]] = []
    for n in range(sessions):
        path = bad.get(n) or rng.choice(PATHS)
        events += [(n * 2_000 + i * 1_000, f"req-{n}", name) for i, name in enumerate(path)]
    events.sort()
    rows = [step(offset, ts, key, name) for offset, (ts, key, name) in enumerate(events)]
    end = events[-1][0] + 700_000  # time passes: every session closes, every window ends
    return [*rows, replace(step(len(rows), end, "-", "start"), text="no session here")]


def run(model: SessionModel, rows: list[Row], *, seed: int, crash: bool, abort: bool) -> Log:
    rng = random.Random(seed)
    log = Log()
    agent = alerting(model)
    i = 0
    while i < len(rows):
        size = rng.randint(1, 25)
        out = agent.batch(
            BUNDLE, rows[i : i + size], NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True
        )
        if abort and rng.random() < 0.2:
            agent.aborted()
            continue
        if crash and rng.random() < 0.15:
            agent = alerting(model)
            agent.restore({("events", 0)}, log.reader)
            continue
        log.commit(out)
        agent.committed()
        i += size
    return log


def test_a_decisive_step_alerts_at_once_and_alike_failures_are_one_alert_and_a_summary(
    model: SessionModel,
) -> None:
    log = run(model, traffic(1), seed=0, crash=False, abort=False)
    sessions = [(d["kind"], d["session"]["key"], d["session"]["reason"]) for d in log.documents]
    assert sessions == [
        ("session", "req-10", "gap"),
        ("session", "req-40", "open"),
        ("summary", "req-25", "gap"),
    ], sessions
    closed, decisive, summary = log.documents
    assert (
        decisive["session"]["decisive"]
        and decisive["session"]["unexpected"][0]["template"] == "request panic <NUM>"
    )
    assert decisive["source"]["offset"] == decisive["session"]["last"]["offset"], "alerted at the panic step"
    assert closed["session"]["unexpected"][-1]["kind"] == "end", "it stopped where 'done' was expected"
    assert (
        closed["session"]["signature"] == summary["session"]["signature"]
        and summary["group"]["suppressed"] == 1
    )
    runs = [(run["template"], run["count"]) for run in closed["session"]["sequence"]]
    assert runs == [("request start <NUM>", 1), ("request auth <NUM>", 1), ("request db <NUM>", 1)]
    assert all(d["detector"] == "sessions" and d["schema_version"] == 3 for d in log.documents)
    assert "ended after step 3" in closed["text"] and "req-10" in closed["text"]


@pytest.mark.parametrize("seed", range(4))
def test_batch_boundaries_aborts_and_restarts_change_nothing(model: SessionModel, seed: int) -> None:
    rows = traffic(seed)
    baseline = run(model, rows, seed=100 + seed, crash=False, abort=False)
    assert len(baseline.documents) == 3
    for crash, abort in ((False, True), (True, True)):
        again = run(model, rows, seed=200 + seed, crash=crash, abort=abort)
        assert [(d["id"], d["kind"], d["session"]["events"]) for d in again.documents] == [
            (d["id"], d["kind"], d["session"]["events"]) for d in baseline.documents
        ]


def test_sessions_need_the_bundle_s_model_and_its_windows(model: SessionModel) -> None:
    with pytest.raises(ConfigError, match="no session model"):
        alerting(None)
    with pytest.raises(ConfigError, match=r"gap_seconds = 5\.0"):
        alerting(model, gap_seconds=5.0)
    alerting(model, gap_seconds=WINDOWS.gap_seconds)  # the model's own value is fine


def test_sessions_off_keep_no_session_state(model: SessionModel) -> None:
    settings = load_settings(rates={"enabled": False})
    agent = Alerting(settings, metrics=AgentMetrics(), verdicts=None)
    agent.use_session_model(model)  # ignored: [sessions] enabled is false
    out = agent.batch(BUNDLE, traffic(2), NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
    assert not any(b'"session' in (r.key or b"") for r in out)
    assert not any(r.topic == "anomaly-alerts" for r in out)
