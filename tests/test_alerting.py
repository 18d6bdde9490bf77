"""Alerting without Kafka: event-time windows, summaries, and the same output whatever the batch
boundaries, aborts and restarts (restored from the changelog records of committed batches)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from grouping_reference import Published, expected, published

from agent.alerts.alerting import Alerting, Scored
from agent.config import load_settings
from agent.kafka.delivery import OutgoingRecord
from agent.model.bundle import Bundle
from agent.model.patterns import PatternScore
from exporters.alerts import pattern_id
from exporters.metrics import AgentMetrics

COOLDOWN_S = 60.0
BUNDLE = cast(
    Bundle,
    SimpleNamespace(
        model_id="m-1",
        sha256="c" * 64,
        detector_name="knn",
        detector=SimpleNamespace(cluster_labels=None),
        normal_patterns=None,
        known_patterns=None,
    ),
)
TEMPLATES = ("disk <PATH> full", "x509: certificate has expired", "raft: lost leader")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

Row = Scored


def scored(*fields: Any) -> Scored:
    """A ``Scored`` event whose score is its pattern's (no value view)."""
    return Scored(*fields, fields[-1].score)


NORMAL = PatternScore(0.5, 0.2, -1)


def normal(partition: int, offset: int, ts: int | None) -> Scored:
    """A normal record (it moves its partition's event time, counts for its rate, never alerts)."""
    return scored("events", partition, offset, None, ts, f"all good #{offset}", "all good #<NUM>", {}, NORMAL)


def anomalous_ones(rows: list[Row]) -> list[Row]:
    return [e for e in rows if e.result.score > 1.0]


def alerting() -> Alerting:
    settings = load_settings(alerts={"group_by": "pattern", "cooldown_seconds": COOLDOWN_S})
    return Alerting(settings, metrics=AgentMetrics(), verdicts=None)


def stream(seed: int, n: int = 400) -> list[Row]:
    """Records of two partitions in offset order: anomalous events of three patterns and normal
    records, timestamps rising over ~3.5 cooldowns with some out of order."""
    rng = random.Random(seed)
    rows: list[Row] = []
    offsets = {0: 0, 1: 0}
    clock = {0: 1_000_000, 1: 1_000_000}
    for _ in range(n):
        p = rng.randrange(2)
        clock[p] += rng.randint(0, 1_100)
        ts = clock[p] - (rng.randint(0, 30_000) if rng.random() < 0.2 else 0)  # some out of order
        offset = offsets[p]
        offsets[p] += 1
        if rng.random() < 0.6:
            template = rng.choice(TEMPLATES)
            rows.append(scored(
                "events", p, offset, None, ts, f"{template} #{offset}", template, {},
                PatternScore(1.0 + rng.random(), 0.5, -1),
            ))  # fmt: skip
        else:
            rows.append(normal(p, offset, ts))
    return rows


@dataclass
class FakeMessage:
    """What ``Alerting.restore`` reads of a changelog record."""

    _key: bytes | None
    _value: bytes | None
    _partition: int
    _offset: int

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return "anomaly-alerts.groups"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Log:
    """The committed output: alert-topic documents and changelog records, as a reader sees them."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []
        self.changelog: list[FakeMessage] = []

    def commit(self, records: list[OutgoingRecord]) -> None:
        for record in records:
            if record.topic == "anomaly-alerts":
                assert record.value is not None
                self.documents.append(json.loads(record.value))
            else:
                assert record.partition is not None
                self.changelog.append(
                    FakeMessage(record.key, record.value, record.partition, len(self.changelog))
                )

    def reader(self, partitions: list[int]) -> Any:
        return iter([m for m in self.changelog if m.partition() in partitions])


def shape(documents: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must not differ between runs: every record's id, kind and counts (not detected_at)."""
    return sorted(
        (
            d["kind"], d["id"], d["source"]["partition"], d["source"]["offset"], d["pattern"]["template"],
            d["group"]["suppressed"], d["group"]["window_start"], json.dumps(d["group"]["first"]),
            json.dumps(d["group"]["last"]),
        )
        for d in documents
    )  # fmt: skip


def run(rows: list[Row], *, seed: int, crash: bool, abort: bool) -> Log:
    """``rows`` through Alerting in random batches; with ``abort`` some batches are aborted and
    redone, with ``crash`` the agent restarts now and then from the committed changelog."""
    rng = random.Random(seed)
    log = Log()
    agent = alerting()
    i = 0
    while i < len(rows):
        size = rng.randint(1, 40)
        batch = rows[i : i + size]
        out = agent.batch(BUNDLE, batch, NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
        if abort and rng.random() < 0.2:
            agent.aborted()
            continue  # redelivered: the same records again (maybe in another batch size)
        if crash and rng.random() < 0.15:
            agent = alerting()  # killed before committing: a new instance restores
            agent.restore({("events", 0), ("events", 1)}, log.reader)
            continue
        log.commit(out)
        agent.committed()
        i += size
    # The end of the stream: the windows close once the partitions' time passes them.
    tail = [normal(p, 10**6, 10**12) for p in (0, 1)]
    log.commit(agent.batch(BUNDLE, tail, NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True))
    agent.committed()
    return log


def reference(rows: list[Row]) -> list[Published]:
    plain = [
        (e.partition, e.timestamp_ms or 0, e.prepared if e.result.score > 1.0 else None, e.offset)
        for e in rows
    ]
    return expected(plain, int(COOLDOWN_S * 1000))


@pytest.mark.parametrize("seed", range(12))
def test_windows_follow_event_time_as_documented(seed: int) -> None:
    rows = stream(seed)
    log = run(rows, seed=seed, crash=False, abort=False)
    assert published(log.documents) == reference(rows)
    anomalous = len(anomalous_ones(rows))
    alerts = sum(1 for d in log.documents if d["kind"] == "alert")
    counted = sum(d["group"]["suppressed"] for d in log.documents if d["kind"] == "summary")
    assert alerts + counted == anomalous, "every anomalous event is an alert or counted in a summary"
    assert alerts < anomalous / 4, "grouping: far fewer alerts than anomalous events"


@pytest.mark.parametrize("seed", range(12))
def test_batch_boundaries_aborts_and_restarts_change_nothing(seed: int) -> None:
    rows = stream(seed)
    baseline = shape(run(rows, seed=1000 + seed, crash=False, abort=False).documents)
    assert shape(run(rows, seed=2000 + seed, crash=False, abort=True).documents) == baseline
    assert shape(run(rows, seed=3000 + seed, crash=True, abort=True).documents) == baseline


def test_a_summary_names_its_first_and_last_counted_event_and_the_pattern() -> None:
    rows: list[Row] = []
    for offset, ts in enumerate((0, 10_000, 20_000, 30_000)):
        score = PatternScore(1.5 + offset / 10, 0.4, -1)
        fields = {"service": "db"}
        rows.append(scored("events", 0, offset, b"k", ts, "disk /a full", "disk <PATH> full", fields, score))
    rows.append(normal(0, 4, 60_000))  # a normal record: the window's end passes
    agent = alerting()
    records = agent.batch(BUNDLE, rows, NOW, lambda e, x: None, lambda _: True)
    documents = [json.loads(r.value or b"") for r in records if r.topic == "anomaly-alerts"]
    alert, summary = documents
    assert alert["kind"] == "alert" and summary["kind"] == "summary"
    assert summary["pattern"]["id"] == alert["pattern"]["id"] == pattern_id("m-1", "disk <PATH> full")
    assert summary["group"]["suppressed"] == 3
    assert summary["group"]["first"] == {"offset": 1, "timestamp": "1970-01-01T00:00:10.000Z"}
    assert summary["group"]["last"] == {"offset": 3, "timestamp": "1970-01-01T00:00:30.000Z"}
    assert summary["source"]["offset"] == 3 and summary["score"] == pytest.approx(1.8)
    assert summary["fields"] == {"service": "db"}


def test_a_quiet_partition_closes_on_the_wall_clock_only_once_caught_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition without records for IDLE_CLOSE_S closes its ended windows on the wall clock
    only when the consumer has read all it holds: one with a backlog (slow to reach on a busy
    machine, say while a new member loads its model) keeps its windows for its own records."""
    clock = [100.0]
    monkeypatch.setattr("agent.alerts.alerting.time.monotonic", lambda: clock[0])
    agent = alerting()
    template = TEMPLATES[0]
    start = int(NOW.timestamp() * 1000) - 3_600_000  # an hour of backlog: event time is behind
    rows: list[Row] = []
    for offset in range(3):
        rows.append(scored(
            "events", 0, offset, None, start + offset, f"{template} #{offset}", template, {},
            PatternScore(2.0, 0.5, -1),
        ))  # fmt: skip
    first = agent.batch(BUNDLE, rows, NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
    agent.committed()
    assert [json.loads(r.value or b"")["kind"] for r in first if r.topic == "anomaly-alerts"] == ["alert"]

    clock[0] += 60.0  # quiet for a minute of wall clock, its window long over by the wall clock
    backlog = agent.batch(BUNDLE, [], NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: False)
    agent.committed()
    assert [r for r in backlog if r.topic == "anomaly-alerts"] == [], "closed although records wait"

    caught_up = agent.batch(BUNDLE, [], NOW, lambda e, exc: pytest.fail(str(exc)), lambda _: True)
    agent.committed()
    summaries = [json.loads(r.value or b"") for r in caught_up if r.topic == "anomaly-alerts"]
    assert [(d["kind"], d["group"]["suppressed"]) for d in summaries] == [("summary", 2)]
