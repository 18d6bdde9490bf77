"""Rates through ``Alerting`` without Kafka: spikes grouped like anomalies, one silence per
episode, the rate scope of feedback, seeds, and exactness over batch splits, aborts and restarts
(restored from the changelog records of committed batches, event time included)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_alerting import BUNDLE, COOLDOWN_S, NOW, Log, Row, scored, shape, stream

from agent.alerts.alerting import Alerting, Scored
from agent.alerts.feedback import Verdicts, feedback_record
from agent.alerts.partition_rates import RatePartitions, seed_document, template_id, tracker
from agent.config import RateSettings, load_settings
from agent.model.patterns import PatternScore
from exporters.alerts import pattern_id
from exporters.metrics import AgentMetrics

MINUTE = 60_000
HEARTBEAT = "heartbeat from <HOST> ok"
CHATTY = "GET <PATH> 200"
# A short warm-up and tight floors so that a test stream of a few hours exercises both rules.
RATES = {"warmup_seconds": 3_600, "min_count": 5, "steady_within_seconds": 1_800}


def alerting(verdicts: Verdicts | None = None, **rates: Any) -> Alerting:
    settings = load_settings(
        alerts={"group_by": "pattern", "cooldown_seconds": 600.0}, rates={**RATES, **rates}
    )
    return Alerting(settings, metrics=AgentMetrics(), verdicts=verdicts)


def event(offset: int, ts: int, template: str, partition: int = 0) -> Scored:
    text = template.replace("<HOST>", f"node-{offset % 3}").replace("<PATH>", f"/p/{offset}")
    return scored("events", partition, offset, None, ts, text, template, {}, PatternScore(0.3, 0.1, -1))


def traffic(seed: int, *, spike_at: int, silence_at: int, hours: int = 4) -> list[Row]:
    """A heartbeat every minute and a chatty pattern about 5 a minute for ``hours``; the chatty
    pattern surges to about 60 a minute for 5 minutes at ``spike_at`` (minutes) and the heartbeat
    stops at ``silence_at`` for 40 minutes."""
    rng = random.Random(seed)
    rows: list[Row] = []
    offset = 0
    for minute in range(hours * 60):
        base = minute * MINUTE
        stamps = [(base + 7_000, HEARTBEAT)] if not silence_at <= minute < silence_at + 40 else []
        chatty = 60 if spike_at <= minute < spike_at + 5 else rng.randint(3, 7)
        stamps += [(base + rng.randrange(MINUTE), CHATTY) for _ in range(chatty)]
        for ts, template in sorted(stamps):
            rows.append(event(offset, ts, template))
            offset += 1
    return rows


def run(rows: list[Row], *, seed: int, crash: bool, abort: bool, **rates: Any) -> Log:
    """``rows`` through Alerting in random batches, with aborts and restarts as in test_alerting."""
    rng = random.Random(seed)
    log = Log()
    agent = alerting(**rates)
    i = 0
    while i < len(rows):
        size = rng.randint(1, 200)
        out = agent.batch(
            BUNDLE, rows[i : i + size], NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True
        )
        if abort and rng.random() < 0.2:
            agent.aborted()
            continue
        if crash and rng.random() < 0.1:
            agent = alerting(**rates)
            agent.restore({("events", 0)}, log.reader)
            continue
        log.commit(out)
        agent.committed()
        i += size
    return log


def kinds(log: Log) -> list[tuple[str, str, int]]:
    """(kind, template, window or bucket start) of every published record, in order."""
    out = []
    for d in log.documents:
        start = d["rate"]["bucket_start"] if d["kind"] != "summary" else d["group"]["window_start"]
        out.append((d["kind"], d["pattern"]["template"], start))
    return out


def test_a_surge_is_one_spike_and_a_summary_and_a_stop_is_one_silence() -> None:
    rows = traffic(1, spike_at=150, silence_at=190)
    log = run(rows, seed=0, crash=False, abort=False)
    published = [(k, t) for k, t, _ in kinds(log)]
    assert published == [("spike", CHATTY), ("summary", CHATTY), ("silence", HEARTBEAT)], published
    spike, summary, silence = log.documents
    assert spike["rate"]["kind"] == summary["rate"]["kind"] == "spike"
    assert spike["source"]["timestamp_ms"] // MINUTE == 150, "decided in the surge's first minute"
    assert summary["group"]["suppressed"] >= 1, "the next spiking buckets are counted, not published"
    assert silence["rate"]["observed"] == 0 and silence["rate"]["bucket_start"].startswith("1970-01-01T03:10")
    assert silence["text"].startswith("heartbeat from node-"), "the silence shows the pattern's example"
    assert spike["pattern"]["id"] == pattern_id(BUNDLE.model_id, CHATTY)
    assert all(d["detector"] == "rates" and d["schema_version"] == 3 for d in log.documents)


def test_nothing_during_the_warm_up() -> None:
    rows = traffic(2, spike_at=20, silence_at=30, hours=1)
    assert run(rows, seed=0, crash=False, abort=False).documents == []


@pytest.mark.parametrize("seed", range(4))
def test_batch_boundaries_aborts_and_restarts_change_nothing(seed: int) -> None:
    rows = traffic(seed, spike_at=120 + seed * 7, silence_at=170)
    baseline = run(rows, seed=100 + seed, crash=False, abort=False)
    assert [k for k, _, _ in kinds(baseline)] == ["spike", "summary", "silence"]
    for crash, abort in ((False, True), (True, True)):
        again = run(rows, seed=200 + seed, crash=crash, abort=abort)
        assert [d["id"] for d in again.documents] == [d["id"] for d in baseline.documents]
        assert kinds(again) == kinds(baseline)


def test_rates_off_publishes_no_rate_record_and_keeps_no_rate_state() -> None:
    rows = traffic(3, spike_at=150, silence_at=190)
    log = run(rows, seed=0, crash=False, abort=False, enabled=False)
    assert log.documents == []
    assert not any(
        json.loads(m.key() or b"{}").get("kind") == "rate" for m in log.changelog if m.key()[:1] == b"{"
    )


def test_a_rate_verdict_mutes_spikes_and_silences_but_not_anomalies() -> None:
    verdicts = Verdicts()
    for template in (CHATTY, HEARTBEAT):
        key, value = feedback_record(pattern_id(BUNDLE.model_id, template), "normal", "me", "", scope="rate")
        verdicts.apply(key, value)
    agent = alerting(verdicts)
    rows = traffic(4, spike_at=150, silence_at=190)
    rows.append(
        scored(
            "events",
            0,
            10**5,
            None,
            rows[-1].timestamp_ms,
            "GET /x 200",
            CHATTY,
            {},
            PatternScore(2.0, 1.0, -1),
        )
    )
    out = agent.batch(BUNDLE, rows, NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
    documents = [json.loads(r.value or b"") for r in out if r.topic == "anomaly-alerts"]
    assert [d["kind"] for d in documents] == ["alert"], "the anomalous event still alerts"


def test_seeded_keys_alert_without_the_warm_up_and_thin_to_a_partition() -> None:
    """A baseline learned from training times (train --time-field) starts a new key warm; with
    two input partitions each key starts from half the rate."""
    settings = RateSettings(**RATES)
    partitions = RatePartitions(settings)
    learner_rows = traffic(5, spike_at=10**6, silence_at=10**6, hours=2)
    baseline = tracker(settings).learn([r.timestamp_ms for r in learner_rows if r.prepared == CHATTY])
    assert baseline is not None
    document = seed_document(settings, {template_id(CHATTY): baseline})
    assert partitions.use_seeds(document) == 1
    partitions.set_partition_counts({"events": 2})
    start = 10 * 3_600_000  # live traffic hours after training
    decisions = []
    for i in range(40):  # 40 in one minute: far above half of ~5 a minute
        decisions += partitions.observe(("events", 0), start + i, CHATTY, {}, lambda: {"prepared": CHATTY})
    assert [d.kind for d in decisions] == ["spike"], "a seeded key needs no warm-up"
    other = RatePartitions(RateSettings(**RATES, bucket_seconds=30))
    assert other.use_seeds(document) == 0, "seeds learned with another bucket are not used"


def test_a_new_text_preparation_forgets_every_key_with_tombstones() -> None:
    agent = alerting()
    rows = traffic(6, spike_at=10**6, silence_at=10**6, hours=2)
    agent.batch(BUNDLE, rows, NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
    agent.committed()
    rates = agent.rates
    assert rates is not None and len(rates) == 2
    rates.reset()
    out = agent.batch(
        BUNDLE, [event(10**6, rows[-1].timestamp_ms + 1, "new")], NOW, lambda e, x: None, lambda _: True
    )
    agent.aborted()
    assert len(rates) == 2, "an aborted batch undoes the reset"
    out = agent.batch(
        BUNDLE, [event(10**6, rows[-1].timestamp_ms + 1, "new")], NOW, lambda e, x: None, lambda _: True
    )
    agent.committed()
    tombstones = [r for r in out if r.value is None and (r.key or b"")[:1] == b"{"]
    assert len(tombstones) == 2 and len(rates) == 1


def test_grouping_output_is_the_same_with_rates_on_and_off() -> None:
    """Rates count alongside without changing what grouping publishes (the default warm-up of a
    day: no rate alert in this short stream)."""
    rows = stream(3)
    outputs = []
    for enabled in (True, False):
        settings = load_settings(
            alerts={"group_by": "pattern", "cooldown_seconds": COOLDOWN_S}, rates={"enabled": enabled}
        )
        agent = Alerting(settings, metrics=AgentMetrics(), verdicts=None)
        log = Log()
        for i in range(0, len(rows), 37):
            log.commit(
                agent.batch(
                    BUNDLE, rows[i : i + 37], NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True
                )
            )
            agent.committed()
        outputs.append(shape(log.documents))
    assert outputs[0] == outputs[1] and outputs[0]


def test_a_whole_source_stopping_is_one_silence_and_a_summary() -> None:
    """Three steady patterns stop in the same minute (the producer died): one silence alert for
    the partition's window, the others counted in its summary, not three pages."""
    templates = [HEARTBEAT, "sync <HOST> done", "queue depth ok"]
    rows: list[Row] = []
    offset = 0
    for minute in range(4 * 60):
        stopped = 180 <= minute < 200
        for k, template in enumerate(templates):
            if not stopped:
                rows.append(event(offset, minute * MINUTE + 1_000 * (k + 1), template))
                offset += 1
        rows.append(event(offset, minute * MINUTE + 30_000, CHATTY))  # the partition's clock goes on
        offset += 1
    log = run(rows, seed=0, crash=True, abort=True)
    assert [(d["kind"], d["rate"]["kind"]) for d in log.documents] == [
        ("silence", "silence"),
        ("summary", "silence"),
    ]
    assert log.documents[1]["group"]["suppressed"] == 2
