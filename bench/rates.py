#!/usr/bin/env python3
"""Rate detection benchmark: real logs replayed with their own timestamps, incidents injected.

Prints one JSON object on stdout (and writes it to ``--out``); progress goes to stderr.

Data sets (``--datasets``, default ``../shared/datasets``): ``hdfs_sessions`` (111k HDFS lines,
39 h), the loghub 2k samples ``hdfs_2k`` (38 h), ``bgl_2k`` (213 days), ``thunderbird_2k``
(12 min, so it is looped back to back — each copy shifted by the sample's span plus one second
— to cover ``--min-days``). The text of a line is the line (BGL/Thunderbird without their label
column); every line keeps its own timestamp as its event time.

**Modes.**

- ``--mode offline`` (default): ``RateTracker`` driven directly, the way the pipeline drives it
  (``observe`` per record at the running maximum of the timestamps, ``commit`` per 1,024
  records). The pattern of a line is its masked text (``TextPreparation(mask=True)``). Two
  variants per data set: ``online`` (the tracker learns from the replay's first event: every key
  warms up) and ``seeded`` (the first ``warmup_ms`` of event time, 1 day, is training data: each
  pattern's baseline is ``RateTracker.learn``-ed from it and seeds the key; the rest is replayed).
  ``--sweep`` also runs the knob sweep that chose the defaults (one knob at a time around them).
- ``--mode broker``: the real agent (``anomaly-agent run``, the product's settings: ``[rates]``
  and ``[alerts]`` defaults, grouping by pattern) on the project's local broker
  (``deploy/local/kafka.sh``, one for the whole run). Per data set the first day of event time is
  training data: ``anomaly-agent train --time-field`` (knn) learns the bundle and every training
  template's rate baseline, so keys are seeded; the rest is produced with each line's own
  timestamp as its Kafka record timestamp into single-partition topics (a key is (partition,
  template): one partition per stream keeps the rule's keys those of the offline mode, and seeds
  unthinned). The pattern of a line is the agent's: the template id of the bundle's prepared text.

  Training is the first day of event time, up to and including the first line a day after the
  first (so that train's baselines, learned up to its last event, span the warm-up).

  - **clean**: the replay without injection, ``--repeats`` times with rates on and as often off,
    alternating (on, off, off, on, ...), each a fresh agent and consumer group on a pre-produced
    backlog; events/s from the first consumed record to the group's committed offset reaching
    the end (``bench/replay.py``'s clock), the machine's load average at the start and the end of
    each run, and rates on vs off (``throughput.ratio_on_vs_off``: the on-runs' total events over
    their total time, against the off-runs'; ``pair_ratio_median``: the median over adjacent
    on/off pairs, less exposed to a load that drifts over the series). The rate alerts of the
    on-runs (they must be identical) are the false alerts.
  - **incidents**: the incidents are spread over several input topics of one agent (``pack``),
    so that incidents sharing a topic never share a key, silences of a topic are an hour apart (a
    partition's silences share one cooldown window), and a flood — which touches every key — is
    the last incident of a topic without spikes, an hour after the others; each topic is the
    replay with its incidents injected, cut an hour after its last one. A topic is a partition of
    its own: its keys, grouping windows and event time are independent of the other topics'.
  - ``rule_check``: ``RateTracker`` run directly with the seeds the agent took (offline mode's
    replayer) must decide the broker's alerts: the clean replay's exactly, and every incident
    (replayed alone from a snapshot at its onset) scored the same; and what the rule would
    detect if every training template's baseline seeded its key (the agent keeps only those
    covering the whole warm-up).

**Incidents** (planned with ``--seed``; onsets where keys may alert: from an hour after the
warm-up or the training day to an hour before the end). A known pattern at 10×, 20× and 50×
**its rate** for 5 minutes: the extra events evenly spaced (in broker mode copies of the key's
lines of the hour before). *Its rate* (``--spike-rate``) is by default its events in the **hour
before the onset**, per minute (patterns with at least one event per 10 minutes in that hour):
"arriving 20 times faster" is about what the pattern is doing now; ``day`` takes its mean over the
24 hours before instead (patterns with one event per 10 minutes over the day), which is not a rate
these bursty patterns run at — a job's block deletions burst at 200-400× their daily mean on their
own, so 20× their daily mean is a normal minute of theirs. A **steady** pattern silent for 15
minutes (steady, by this oracle: no gap as long as the silence in the 24 h before, and at its rate
over the hour before a 15-minute silence becomes improbable — ``P(no event) < alpha`` under
Poisson at that rate, ``alpha`` = the rule's default ``silence_alpha`` — at least 2 buckets before
it ends); the 3 **busiest** patterns (e.g. HDFS's write path) silent for 20 minutes from the start
of their busiest hour; every pattern of the source at 5× for 5 minutes (a **flood**; ``--floods``
of them, default ``--per-kind``).

Figures per data set (and variant): for each incident kind the recall within 2 buckets (spikes
and floods: of the onset; silences: of the oracle's improbable point) and during the incident at
all, the delay in buckets (p50/max; silences also from the onset); a spike is **detectable** when
the surge is statistically visible within one bucket (its count per bucket reaches the count
that Poisson at its rate puts below 1e-6) and beyond the key's busiest minute of the day before
(else the key does that on its own): recall over all incidents and over the detectable ones.
``false_per_day``: rate alerts (spikes and silences; summaries are follow-ups) of the clean
replay per day of replay, and per day of *alertable* replay (after the warm-up, or the training
day). A silence decided on the wall clock after the replay ended (a partition that went quiet)
is not counted. ``targets`` sums up issue 17's targets.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository before bench/ (whose agent.py would shadow the package)

from scipy import stats  # noqa: E402

from agent.alerts.rates import Baseline, RateDecision, RateKey, RateState, RateTracker  # noqa: E402
from agent.model.textprep import TextPreparation  # noqa: E402
from exporters.alerts import pattern_id  # noqa: E402

MODEL_ID = "rates-bench"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MINUTE_MS = 60_000
SETS = ("hdfs_sessions", "hdfs_2k", "bgl_2k", "thunderbird_2k")
FILES = {
    "hdfs_sessions": "hdfs_sessions/HDFS_sessions.log.gz",
    "hdfs_2k": "hdfs_2k/HDFS_2k.log",
    "bgl_2k": "bgl_2k/BGL_2k.log",
    "thunderbird_2k": "thunderbird_2k/Thunderbird_2k.log",
}
SPIKES = {"spike10": 10, "spike20": 20, "spike50": 50}
SPIKE_MS = 5 * MINUTE_MS
SILENCE_MS = 15 * MINUTE_MS
BUSY_SILENCE_MS = 20 * MINUTE_MS
FLOOD = 5
ORACLE_ALPHA = 1e-6  # the rule's default silence_alpha: "improbable" for the silence oracle
KNOWN_PER_MIN = 0.1  # a known pattern: at least one event per 10 minutes (over the rate's window)
SPIKE_RATE_WINDOWS = {"hour": HOUR_MS, "day": DAY_MS}

Event = tuple[int, str, int]  # (event time ms, pattern id, index of its line in Stream.texts)


# --------------------------------------------------------------------- data


@dataclass
class Lines:
    """A data set's lines as the agent sees them, in time order (stable), looped if short."""

    name: str
    times: list[int]
    texts: list[str]
    loops: int

    @property
    def start_ms(self) -> int:
        return self.times[0]


@dataclass
class Stream:
    """The lines with their patterns: ``events`` index ``texts``."""

    name: str
    events: list[Event]
    texts: list[str]
    loops: int

    @property
    def start_ms(self) -> int:
        return self.events[0][0]

    @property
    def end_ms(self) -> int:
        return self.events[-1][0]


def _hdfs_time(line: str) -> int:
    day, clock = line.split(" ", 2)[:2]
    stamp = datetime.strptime(day + clock, "%y%m%d%H%M%S").replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def load_lines(name: str, datasets: Path, min_days: float) -> Lines:
    """The data set's (timestamp ms, text), sorted by time; a sample shorter than a day is looped
    (each copy shifted by its span plus a second) to cover ``min_days``."""
    path = datasets / FILES[name]
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[tuple[int, str]] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if name.startswith("hdfs"):
                rows.append((_hdfs_time(line), line))
            else:  # loghub BGL/Thunderbird: "<label> <epoch seconds> ...", the label is not text
                rest = line.split(" ", 1)[1]
                rows.append((int(rest.split(" ", 1)[0]) * 1000, rest))
    rows.sort(key=lambda r: r[0])
    span = rows[-1][0] - rows[0][0] + 1000
    loops = max(1, math.ceil(min_days * DAY_MS / span)) if span < DAY_MS else 1
    times = [ts + i * span for i in range(loops) for ts, _ in rows]
    texts = [text for _ in range(loops) for _, text in rows]
    return Lines(name, times, texts, loops)


def offline_patterns() -> Callable[[str], str]:
    """The offline mode's pattern of a text: ``pattern_id`` of its masked text."""
    prep = TextPreparation(mask=True)
    return lambda text: pattern_id(MODEL_ID, prep.prepare(text))


def make_stream(lines: Lines, identify: Callable[[str], str]) -> Stream:
    """``lines`` with the pattern ``identify`` gives each text (computed once per distinct text)."""
    ids: dict[str, str] = {}
    events: list[Event] = []
    for i, (ts, text) in enumerate(zip(lines.times, lines.texts, strict=True)):
        pid = ids.get(text)
        if pid is None:
            pid = ids[text] = identify(text)
        events.append((ts, pid, i))
    return Stream(lines.name, events, lines.texts, lines.loops)


def load_stream(name: str, datasets: Path, min_days: float) -> Stream:
    """The offline mode's stream of a data set."""
    return make_stream(load_lines(name, datasets, min_days), offline_patterns())


# --------------------------------------------------------------------- incidents


@dataclass(frozen=True)
class Incident:
    kind: str  # spike10 | spike20 | spike50 | silence | busy_silence | flood5
    key: str | None  # the pattern id; None for a flood
    onset_ms: int
    duration_ms: int
    rate_per_min: float  # the key's (flood: the source's) rate the incident is relative to
    improbable_ms: int | None = None  # silences: where the oracle finds the gap improbable
    peak_ratio: float = 0.0  # spikes: the surge per minute / the key's busiest minute of the day before
    visible: bool = True  # spikes: the surge per bucket reaches Poisson's 1e-6 quantile at the key's rate
    lines: tuple[int, ...] = ()  # spikes: the key's lines of the hour before (what the surge repeats)

    @property
    def end_ms(self) -> int:
        return self.onset_ms + self.duration_ms


class History:
    """Per-pattern sorted event times and lines, for the oracles (counts in windows, gaps)."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.times: dict[str, list[int]] = defaultdict(list)
        self.lines: dict[str, list[int]] = defaultdict(list)
        for ts, pid, line in events:
            self.times[pid].append(ts)
            self.lines[pid].append(line)

    def count(self, pid: str, lo: int, hi: int) -> int:
        times = self.times[pid]
        return bisect.bisect_left(times, hi) - bisect.bisect_left(times, lo)

    def lines_between(self, pid: str, lo: int, hi: int) -> tuple[int, ...]:
        times = self.times[pid]
        return tuple(self.lines[pid][bisect.bisect_left(times, lo) : bisect.bisect_left(times, hi)])

    def busiest_minute(self, pid: str, lo: int, hi: int) -> int:
        times = self.times[pid]
        inside = times[bisect.bisect_left(times, lo) : bisect.bisect_left(times, hi)]
        return max(Counter(t // MINUTE_MS for t in inside).values(), default=0)

    def largest_gap(self, pid: str, lo: int, hi: int) -> int:
        times = self.times[pid]
        inside = times[bisect.bisect_left(times, lo) : bisect.bisect_left(times, hi)]
        if not inside:
            return hi - lo
        edges = [lo, *inside, hi]
        return max(b - a for a, b in itertools.pairwise(edges))


def plan_incidents(
    stream: Stream,
    lo_ms: int,
    hi_ms: int,
    rng: random.Random,
    per_kind: int,
    *,
    spike_rate: str = "hour",
    floods: int | None = None,
) -> list[Incident]:
    """``per_kind`` incidents of each kind (``floods`` floods) with onsets in [lo_ms, hi_ms) (see
    the module doc); a spike is relative to the key's rate over ``SPIKE_RATE_WINDOWS[spike_rate]``
    before the onset."""
    if hi_ms <= lo_ms:
        return []
    history = History(stream.events)
    window = SPIKE_RATE_WINDOWS[spike_rate]
    out: list[Incident] = []
    for kind in SPIKES:
        for _ in range(per_kind * 10):  # tries
            if sum(1 for i in out if i.kind == kind) >= per_kind:
                break
            onset = rng.randrange(lo_ms, hi_ms) // 1000 * 1000
            rates = {
                pid: history.count(pid, onset - window, onset) / (window / MINUTE_MS) for pid in history.times
            }
            known = sorted(pid for pid, rate in rates.items() if rate >= KNOWN_PER_MIN)
            if known:
                pid = rng.choice(known)
                busiest = history.busiest_minute(pid, onset - DAY_MS, onset)
                surge = SPIKES[kind] * rates[pid]
                visible = bool(surge >= stats.poisson.isf(ORACLE_ALPHA, rates[pid]) + 1)
                out.append(
                    Incident(
                        kind,
                        pid,
                        onset,
                        SPIKE_MS,
                        rates[pid],
                        peak_ratio=round(surge / max(busiest, 1), 3),
                        visible=visible,
                        lines=history.lines_between(pid, onset - HOUR_MS, onset)
                        or history.lines_between(pid, onset - DAY_MS, onset),
                    )
                )
    needed = math.log(1 / ORACLE_ALPHA)
    for _ in range(per_kind * 20):
        if sum(1 for i in out if i.kind == "silence") >= per_kind:
            break
        onset = rng.randrange(lo_ms, hi_ms) // 1000 * 1000
        steady = []
        for pid in sorted(history.times):
            rate = history.count(pid, onset - HOUR_MS, onset) / HOUR_MS  # per ms
            if rate <= 0 or needed / rate > SILENCE_MS - 2 * MINUTE_MS:
                continue
            if history.largest_gap(pid, onset - DAY_MS, onset) < SILENCE_MS:
                steady.append((pid, rate))
        if steady:
            pid, rate = rng.choice(steady)
            out.append(
                Incident(
                    "silence", pid, onset, SILENCE_MS, rate * MINUTE_MS, onset + math.ceil(needed / rate)
                )
            )
    volume = Counter(pid for _, pid, _ in stream.events)
    for pid, _ in volume.most_common(3):
        best, onset = -1, -1
        for ts in history.times[pid]:
            if lo_ms <= ts < hi_ms:
                n = history.count(pid, ts, ts + HOUR_MS)
                if n > best:
                    best, onset = n, ts
        if onset < 0:
            continue
        rate = history.count(pid, onset - HOUR_MS, onset) / HOUR_MS
        rate = max(rate, best / HOUR_MS)
        out.append(
            Incident(
                "busy_silence",
                pid,
                onset,
                BUSY_SILENCE_MS,
                rate * MINUTE_MS,
                onset + math.ceil(needed / rate),
            )
        )
    for _ in range(per_kind if floods is None else floods):
        onset = rng.randrange(lo_ms, hi_ms) // 1000 * 1000
        total = sum(history.count(pid, onset - HOUR_MS, onset) for pid in history.times) / 60
        out.append(Incident(f"flood{FLOOD}", None, onset, SPIKE_MS, total))
    return sorted(out, key=lambda i: (i.onset_ms, i.kind, i.key or ""))


def inject(events: Sequence[Event], incident: Incident) -> list[Event]:
    """``events`` (a time-sorted slice starting at or before the onset) with the incident
    applied: a spike adds (k - 1) × its rate × its duration events of the key, evenly spaced
    (repeating the key's recent lines); a silence removes the key's events; a flood repeats every
    event ``FLOOD`` times."""
    lo, hi = incident.onset_ms, incident.end_ms
    if incident.kind in SPIKES:
        assert incident.key is not None
        extra = round((SPIKES[incident.kind] - 1) * incident.rate_per_min * incident.duration_ms / MINUTE_MS)
        lines = incident.lines or (-1,)
        added = [
            (lo + (i * incident.duration_ms) // max(extra, 1), incident.key, lines[i % len(lines)])
            for i in range(extra)
        ]
        return sorted([*events, *added], key=lambda e: e[0])
    if incident.kind.endswith("silence"):
        return [e for e in events if not (e[1] == incident.key and lo <= e[0] < hi)]
    out: list[Event] = []
    for e in events:
        out.extend([e] * (FLOOD if lo <= e[0] < hi else 1))
    return out


def inject_all(events: Sequence[Event], incidents: Sequence[Incident]) -> list[Event]:
    """``events`` with every incident applied (each changes only its own window)."""
    out = list(events)
    for incident in incidents:
        lo = bisect.bisect_left(out, (incident.onset_ms, ""))
        hi = bisect.bisect_left(out, (incident.end_ms, ""))
        out[lo:hi] = inject(out[lo:hi], incident)
    return out


# --------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Detection:
    """One rate alert as the benchmark scores it (an offline decision, or an alert record):
    ``at_ms`` is the event time it was decided at."""

    kind: str
    pattern: str
    at_ms: int


@dataclass
class Outcome:
    """What a replayer found: the clean replay's rate alerts, those of each incident's replay
    (in the order of the incidents given), and what the replayer measured on the way."""

    clean: list[Detection]
    found: list[list[Detection]]
    measured: dict[str, Any] = field(default_factory=dict)


class Replayer(Protocol):
    """How a stream reaches the rule: ``OfflineReplayer`` (the tracker, directly) or
    ``BrokerReplayer`` (the real agent, through Kafka)."""

    def replay(self, events: Sequence[Event], incidents: Sequence[Incident], bucket_ms: int) -> Outcome: ...


def _key(pid: str) -> RateKey:
    return ("bench", 0, pid, ())


def _detections(decisions: Sequence[RateDecision]) -> list[Detection]:
    return [Detection(d.kind, d.key[2], d.at_ms) for d in decisions]


def _window(events: Sequence[Event], lo: int, hi: int) -> list[Event]:
    """The events with ``lo <= time < hi`` (``events`` sorted by time; pattern ids sort after "")."""
    return list(events[bisect.bisect_left(events, (lo, "")) : bisect.bisect_left(events, (hi, ""))])


BATCH = 1024  # records per transaction, as the pipeline's default batch.max_size


@dataclass
class OfflineReplayer:
    """Drives a ``RateTracker`` the way the pipeline does: per record ``observe`` at the running
    maximum of the timestamps, ``commit`` after every ``BATCH`` records. The clean replay
    snapshots the tracker at each incident's onset; each incident is then replayed on its own
    from its snapshot (restored into a fresh tracker, as a restarted agent restores its
    changelog) up to 3 buckets after its end."""

    knobs: dict[str, Any]
    seeds: dict[str, Baseline]
    _copies: dict[int, tuple[dict[RateKey, RateState], int]] = field(default_factory=dict)

    def replay(self, events: Sequence[Event], incidents: Sequence[Incident], bucket_ms: int) -> Outcome:
        clean, seconds = self.clean(events, [i.onset_ms for i in incidents])
        found = []
        for incident in incidents:
            window = _window(events, incident.onset_ms, incident.end_ms + 3 * bucket_ms)
            found.append(self.incident(incident, inject(window, incident)))
        return Outcome(clean, found, {"us_per_event": round(seconds / len(events) * 1e6, 2)})

    def clean(self, events: Sequence[Event], checkpoints: Sequence[int]) -> tuple[list[Detection], float]:
        """The clean replay's decisions and the loop's seconds (the snapshots left out)."""
        tracker = RateTracker(**self.knobs)
        seeds = self.seeds
        pending = sorted(set(checkpoints), reverse=True)
        decisions: list[RateDecision] = []
        event_time = -1
        observe, commit = tracker.observe, tracker.commit
        started, snapshots = time.perf_counter(), 0.0
        for n, (ts, pid, _) in enumerate(events):
            if pending and ts >= pending[-1]:
                commit()
                taken = time.perf_counter()
                while pending and ts >= pending[-1]:
                    self._copies[pending.pop()] = (tracker.snapshot(), event_time)
                snapshots += time.perf_counter() - taken
            event_time = max(event_time, ts)
            out = observe(("bench", 0, pid, ()), event_time, seed=seeds.get(pid))
            if out:
                decisions.extend(out)
            if n % BATCH == BATCH - 1:
                commit()
        commit()
        return _detections(decisions), time.perf_counter() - started - snapshots

    def incident(self, incident: Incident, events: Sequence[Event]) -> list[Detection]:
        states, event_time = self._copies[incident.onset_ms]
        tracker = RateTracker(**self.knobs)
        for key, state in states.items():
            tracker.restore(key, state)
        decisions: list[RateDecision] = []
        for n, (ts, pid, _) in enumerate(events):
            event_time = max(event_time, ts)
            decisions.extend(tracker.observe(_key(pid), event_time, seed=self.seeds.get(pid)))
            if n % BATCH == BATCH - 1:
                tracker.commit()
        return _detections(decisions)


# --------------------------------------------------------------------- scoring


def score_incident(incident: Incident, found: Sequence[Detection], bucket_ms: int) -> dict[str, Any]:
    """Whether and when the incident was detected: the first matching alert after the onset."""
    silence = incident.kind.endswith("silence")
    want = "silence" if silence else "spike"
    hits = [
        d.at_ms
        for d in found
        if d.kind == want
        and (incident.key is None or d.pattern == incident.key)
        and incident.onset_ms <= d.at_ms <= incident.end_ms + 2 * bucket_ms
    ]
    first = min(hits) if hits else None
    reference = (
        incident.improbable_ms if silence and incident.improbable_ms is not None else incident.onset_ms
    )
    delay = None if first is None else (first - reference) / bucket_ms
    return {
        "kind": incident.kind,
        "onset": incident.onset_ms,
        "rate_per_min": round(incident.rate_per_min, 3),
        "detected": first is not None,
        "delay_buckets": None if delay is None else round(delay, 2),
        "from_onset_buckets": None if first is None else round((first - incident.onset_ms) / bucket_ms, 2),
        "within_2": delay is not None and delay <= 2.0,
        "peak_ratio": incident.peak_ratio,
        "detectable": incident.visible and incident.peak_ratio > 1.0,
    }


def summarise(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({s["kind"] for s in scored}):
        rows = [s for s in scored if s["kind"] == kind]
        delays = [s["delay_buckets"] for s in rows if s["delay_buckets"] is not None]
        entry: dict[str, Any] = {
            "n": len(rows),
            "recall_within_2_buckets": round(sum(s["within_2"] for s in rows) / len(rows), 3),
            "recall_any": round(sum(s["detected"] for s in rows) / len(rows), 3),
            "delay_buckets_p50": round(statistics.median(delays), 2) if delays else None,
            "delay_buckets_max": max(delays) if delays else None,
        }
        if kind in SPIKES:
            part = [s for s in rows if s["detectable"]]
            entry["detectable"] = {
                "n": len(part),
                "recall_within_2_buckets": (
                    round(sum(s["within_2"] for s in part) / len(part), 3) if part else None
                ),
            }
        if kind.endswith("silence"):
            onsets = [s["from_onset_buckets"] for s in rows if s["from_onset_buckets"] is not None]
            entry["from_onset_buckets_p50"] = round(statistics.median(onsets), 2) if onsets else None
        rates = [s["rate_per_min"] for s in rows]
        entry["rate_per_min_range"] = [min(rates), max(rates)]
        out[kind] = entry
    return out


@dataclass(frozen=True)
class Plan:
    """How a data set is split: what is replayed, from when keys may alert, the training events."""

    events: list[Event]
    alertable_from: int
    training: list[Event]


def split(stream: Stream, mode: str, warmup_ms: int) -> Plan:
    """``online``: everything is replayed, keys alert after their warm-up; ``seeded``: the first
    ``warmup_ms`` of event time (the training span) is training data, the rest is replayed."""
    if mode == "seeded":
        train_end = stream.start_ms + warmup_ms
        cut = bisect.bisect_left(stream.events, (train_end, ""))
        return Plan(stream.events[cut:], train_end, stream.events[:cut])
    return Plan(stream.events, stream.start_ms + warmup_ms, [])


def learned_seeds(plan: Plan, tracker: RateTracker) -> dict[str, Baseline]:
    """Each training pattern's baseline, learned by the rule up to the end of training."""
    seeds: dict[str, Baseline] = {}
    history = History(plan.training)
    for pid, times in history.times.items():
        baseline = tracker.learn(times, until_ms=plan.alertable_from - 1)
        if baseline is not None:
            seeds[pid] = baseline
    return seeds


def evaluate(
    stream: Stream,
    mode: str,
    knobs: dict[str, Any],
    seed: int,
    per_kind: int,
    *,
    replayer: Callable[[Plan], Replayer] | None = None,
    spike_rate: str = "hour",
    floods: int | None = None,
    train_ms: int | None = None,
) -> dict[str, Any]:
    """One data set in one mode: plan the incidents, replay (``replayer(plan)``, default the
    offline tracker with seeds learned from the plan's training events), score. ``train_ms``: the
    training span of the seeded mode (default the warm-up)."""
    rule = RateTracker(**knobs)
    bucket_ms = rule.bucket_ms
    plan = split(stream, mode, rule.warmup_ms if train_ms is None else train_ms)
    events = plan.events
    replay_ms = events[-1][0] - events[0][0]
    alertable_ms = max(0, stream.end_ms - plan.alertable_from)
    incidents = plan_incidents(
        stream,
        plan.alertable_from + HOUR_MS,
        stream.end_ms - HOUR_MS,
        random.Random(f"{seed}-{stream.name}-{mode}"),
        per_kind,
        spike_rate=spike_rate,
        floods=floods,
    )
    if replayer is None:
        chosen: Replayer = OfflineReplayer(knobs, learned_seeds(plan, rule))
    else:
        chosen = replayer(plan)
    outcome = chosen.replay(events, incidents, bucket_ms)
    kinds = Counter(d.kind for d in outcome.clean)
    scored = [score_incident(i, f, bucket_ms) for i, f in zip(incidents, outcome.found, strict=True)]
    days, alertable_days = replay_ms / DAY_MS, alertable_ms / DAY_MS
    return {
        "events": len(events),
        "patterns": len({pid for _, pid, _ in events}),
        "replay_days": round(days, 3),
        "alertable_days": round(alertable_days, 3),
        "training_events": len(plan.training),
        "clean_alerts": dict(kinds),
        "false_per_day": round(len(outcome.clean) / days, 3) if days else None,
        "false_per_alertable_day": round(len(outcome.clean) / alertable_days, 3) if alertable_days else None,
        **outcome.measured,
        "incidents": summarise(scored),
    }


def targets(entry: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's targets for one data set and mode: >= 95 % of 20× spikes and of silences within
    2 buckets, <= 2 false rate alerts per day (per alertable day: the stricter reading)."""
    incidents = entry["incidents"]
    spikes, silences = incidents.get("spike20"), incidents.get("silence")
    out: dict[str, Any] = {
        "spike20_within_2": spikes and spikes["recall_within_2_buckets"],
        "spike20_detectable_within_2": spikes and spikes["detectable"]["recall_within_2_buckets"],
        "silence_within_2": silences and silences["recall_within_2_buckets"],
        "busy_silence_within_2": incidents["busy_silence"]["recall_within_2_buckets"]
        if "busy_silence" in incidents
        else None,
        "false_per_alertable_day": entry["false_per_alertable_day"],
    }
    out["met"] = {
        name: None if out[name] is None else out[name] >= 0.95
        for name in (
            "spike20_within_2",
            "spike20_detectable_within_2",
            "silence_within_2",
            "busy_silence_within_2",
        )
    }
    out["met"]["false_per_day"] = (entry["false_per_alertable_day"] or 0.0) <= 2.0
    ratio = entry.get("throughput", {}).get("ratio_on_vs_off")
    if ratio is not None:
        out["throughput_ratio_on_vs_off"] = ratio
        out["met"]["throughput"] = ratio >= 0.9
    return out


# --------------------------------------------------------------------- sweep (offline)

SWEEP: dict[str, list[Any]] = {
    "spike_margin": [1.25, 1.5, 1.75, 2.0, 3.0],
    "min_count": [3, 5, 10, 20],
    "min_ratio": [2.0, 3.0, 5.0],
    "spike_alpha": [1e-4, 1e-6, 1e-8],
    "gap_margin": [1.0, 1.5, 2.0, 3.0],
    "silence_alpha": [1e-4, 1e-6, 1e-8],
    "warmup_ms": [6 * HOUR_MS, DAY_MS],
    "fast_half_life_ms": [HOUR_MS // 4, HOUR_MS, 4 * HOUR_MS],
    "slow_half_life_ms": [6 * HOUR_MS, DAY_MS, 7 * DAY_MS],
}

SWEPT_RECALLS = ("spike20", "spike20_detectable", "spike50_detectable", "silence", "busy_silence", "flood5")


def sweep(
    streams: Sequence[Stream], base: dict[str, Any], seed: int, per_kind: int, spike_rate: str
) -> list[dict[str, Any]]:
    """One knob at a time around ``base`` (every data set, both modes): the clean replays' false
    alerts (in all, and the worst per alertable day), and recall within 2 buckets pooled over the
    data sets: 20× spikes (all, and the detectable ones), detectable 50× spikes, silences."""
    rows = []
    for knob, values in SWEEP.items():
        for value in values:
            knobs = {**base, knob: value}
            worst, false = 0.0, 0
            pools: dict[str, list[tuple[float, int]]] = defaultdict(list)
            for stream in streams:
                for mode in ("online", "seeded"):
                    result = evaluate(stream, mode, knobs, seed, per_kind, spike_rate=spike_rate)
                    worst = max(worst, result["false_per_alertable_day"] or 0.0)
                    false += sum(result["clean_alerts"].values())
                    for kind, entry in result["incidents"].items():
                        pools[kind].append((entry["recall_within_2_buckets"], entry["n"]))
                        if "detectable" in entry and entry["detectable"]["n"]:
                            part = entry["detectable"]
                            pools[f"{kind}_detectable"].append((part["recall_within_2_buckets"], part["n"]))
            row: dict[str, Any] = {"knob": knob, "value": value, "false_alerts": false}
            row["worst_false_per_alertable_day"] = worst
            for pool in SWEPT_RECALLS:
                row[pool] = _pooled(pools[pool])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _pooled(parts: Sequence[tuple[float, int]]) -> float | None:
    n = sum(k for _, k in parts)
    return round(sum(r * k for r, k in parts) / n, 3) if n else None


# --------------------------------------------------------------------- broker mode: the machinery

EVENTS_CONSUMED = "anomaly_agent_events_consumed_total"
CATCH_UP_S = 1_800.0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _shared_helpers() -> None:
    """Make the helpers the other broker benchmarks share importable: the agent process and its
    environment (tests/agent_helpers.py), the local broker (bench/chaos.py)."""
    for path in (REPO / "tests", REPO / "bench"):
        if str(path) not in sys.path:
            sys.path.append(str(path))


class Kafka:
    """Topics, records and the agent on one broker."""

    def __init__(self, broker: Any, work: Path) -> None:
        from confluent_kafka.admin import AdminClient

        self.bootstrap = broker.bootstrap
        self.work = work
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"rates-{what}-{self._n}"

    def topic(self, name: str) -> str:
        """A one-partition topic that keeps its records however old their timestamps are."""
        from confluent_kafka.cimpl import NewTopic

        futures = self.admin.create_topics([NewTopic(name, 1, config={"retention.ms": "-1"})])
        futures[name].result(timeout=60)
        return name

    def produce(self, topic: str, events: Sequence[Event], texts: Sequence[str]) -> None:
        """Each event as ``{"text": ...}`` with its time as the Kafka record timestamp."""
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 50, "batch.size": 1_000_000, "acks": "all"}
        )
        encoded: dict[int, bytes] = {}
        for n, (ts, _, line) in enumerate(events):
            value = encoded.get(line)
            if value is None:
                value = encoded[line] = json.dumps({"text": texts[line]}).encode()
            while True:
                try:
                    producer.produce(topic, value, partition=0, timestamp=ts)
                    break
                except BufferError:
                    producer.poll(0.05)
            if n % 5000 == 0:
                producer.poll(0)
        if producer.flush(300) != 0:
            raise SystemExit(f"rates: could not deliver the replay to {topic}")

    def agent(self, name: str, inputs: Sequence[str], bundle: Path, *, rates: bool) -> tuple[Any, str, str]:
        """An agent with the product's settings (``[rates] enabled`` = ``rates``) on ``inputs``,
        its own group, alert topic and dead letters; (the agent, its group, its alert topic)."""
        alerts, dead = self.topic(self.name("alerts")), self.topic(self.name("dead"))
        group = self.name("group")
        settings = {
            "KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA__GROUP_ID": group,
            "TOPICS__INPUT": json.dumps(list(inputs)),
            "TOPICS__ALERTS": alerts,
            "TOPICS__DEAD_LETTER": dead,
            "MODEL__BUNDLE": str(bundle),
            "MODEL__WATCH": "false",
            "MODEL__INTRA_OP_THREADS": "1",
            "INSTANCE_ID": name,
            "METRICS__PORT": "0",
            "HEALTH__PORT": "0",
            "RATES__ENABLED": "true" if rates else "false",
        }
        _shared_helpers()
        from agent_helpers import AgentProcess

        overrides = {f"ANOMALY_AGENT_{k}": v for k, v in settings.items()}
        return AgentProcess(overrides, self.work / f"{name}.log"), group, alerts

    def watcher(self, group: str) -> Any:
        """A consumer with ``group``'s id that never joins it: reads its committed offsets."""
        from confluent_kafka import Consumer

        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False})

    @staticmethod
    def caught_up(watcher: Any, topics: Sequence[str]) -> bool:
        """Whether the group committed every topic's (one partition) end offset."""
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, 0) for t in topics]
        try:
            committed = watcher.committed(tps, timeout=10)
            ends = [watcher.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in tps]
        except KafkaException:
            return False  # e.g. the coordinator still loading: ask again
        return all(c.offset >= end for c, end in zip(committed, ends, strict=True))

    def documents(self, topic: str) -> list[dict[str, Any]]:
        """Every committed record of the (one-partition) ``topic``, read as subscribers read."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.name("reader"),
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        try:
            tp = TopicPartition(topic, 0, 0)
            end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            consumer.assign([tp])
            out: list[dict[str, Any]] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is None:
                        out.append(json.loads(msg.value() or b"{}"))
                position = consumer.position([tp])[0].offset
                if position >= end:
                    break
            return out
        finally:
            consumer.close()

    def run(self, name: str, inputs: Sequence[str], bundle: Path, *, rates: bool) -> dict[str, Any]:
        """One agent from start to the group's committed offsets at the end of every input:
        events/s from its first consumed record (the figure), the load averages, and the
        published documents (once caught up: every event-time decision is committed with its
        batch)."""
        load = _load()
        agent, group, alerts = self.agent(name, inputs, bundle, rates=rates)
        watcher = self.watcher(group)
        try:
            agent.wait_ready()
            deadline = time.monotonic() + CATCH_UP_S
            while agent.metric(EVENTS_CONSUMED) == 0:
                if time.monotonic() > deadline or agent.proc.poll() is not None:
                    raise SystemExit(f"rates: {name} consumed nothing:\n{agent.log()[-3000:]}")
                time.sleep(0.01)
            start = time.monotonic()
            while not self.caught_up(watcher, inputs):
                if time.monotonic() > deadline or agent.proc.poll() is not None:
                    raise SystemExit(f"rates: {name} did not catch up:\n{agent.log()[-3000:]}")
                time.sleep(0.05)
            seconds = time.monotonic() - start
            consumed = agent.metric(EVENTS_CONSUMED)
        finally:
            watcher.close()
            code = agent.terminate(timeout=60)
        return {
            "seconds": round(seconds, 2),
            "events": int(consumed),
            "events_per_s": round(consumed / seconds, 1),
            "exit_code": code,
            "load_before_after": [load, _load()],
            "documents": self.documents(alerts),
        }


def train_bundle(work: Path, name: str, lines: Lines, until_ms: int) -> tuple[Path, dict[str, Any]]:
    """``anomaly-agent train --time-field`` (knn) on the lines before ``until_ms``: the bundle and
    what the manifest says it learned of the rates."""
    path = work / f"{name}-train.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for ts, text in zip(lines.times, lines.texts, strict=True):
            if ts >= until_ms:
                break
            fh.write(json.dumps({"text": text, "at": ts}) + "\n")
    out = work / f"{name}-bundle"
    _shared_helpers()
    from agent_helpers import cli

    started = time.monotonic()
    result = cli("train", "--input", str(path), "--text-field", "text", "--time-field", "at",
                 "--detector", "knn", "--out", str(out), timeout=3_600)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"rates: train failed on {name}:\n{result.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    learned = dict(manifest["training"].get("rates") or {})
    learned["train_seconds"] = round(time.monotonic() - started, 1)
    learned["records"] = manifest["training"]["records"]
    return out, learned


def bundle_seeds(bundle: Path, warmup_ms: int, bucket_ms: int) -> dict[str, Baseline]:
    """The seeds the agent takes from ``bundle`` for a one-partition topic (those covering
    ``warmup_ms``, as ``RatePartitions.use_seeds`` does; 0: all), by template id."""
    from agent.model.bundle import load_bundle

    document = load_bundle(bundle).rate_seeds or {}
    seeds: dict[str, Baseline] = {}
    for tid, row in document.get("baselines", {}).items():
        since, buckets, fast_sum, fast_squares, slow_sum, busiest, worst_gap = row
        if int(buckets) >= warmup_ms / bucket_ms:
            seeds[str(tid)] = Baseline(
                int(since), int(buckets), fast_sum, fast_squares, slow_sum, busiest, worst_gap
            )
    return seeds


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def pack(incidents: Sequence[Incident], bucket_ms: int) -> list[list[Incident]]:
    """Spread ``incidents`` over topics (first fit, in onset order) so that within a topic no key
    has two incidents, silences start at least an hour apart (a partition's silences share one
    cooldown window), and a flood (every key) is the last incident, an hour after the others end,
    of a topic without spikes (a spike raises its key's record, which a later flood then has to
    beat)."""
    topics: list[list[Incident]] = []
    for incident in sorted(incidents, key=lambda i: (i.onset_ms, i.kind, i.key or "")):
        silence = incident.kind.endswith("silence")
        flood = incident.key is None
        for topic in topics:
            if any(other.key is None for other in topic):
                continue  # closed by its flood
            if flood and any(
                other.kind in SPIKES or other.end_ms + 2 * bucket_ms + HOUR_MS > incident.onset_ms
                for other in topic
            ):
                continue
            if any(other.key == incident.key for other in topic):
                continue
            if silence and any(
                other.kind.endswith("silence") and abs(other.onset_ms - incident.onset_ms) < HOUR_MS
                for other in topic
            ):
                continue
            topic.append(incident)
            break
        else:
            topics.append([incident])
    return topics


@dataclass
class BrokerReplayer:
    """The real agent through Kafka (see the module doc): the clean replay several times (rates on
    and off, alternating), then every incident in one run over several topics."""

    kafka: Kafka
    bundle: Path
    name: str
    stream: Stream
    seeds: dict[str, Baseline]
    all_seeds: dict[str, Baseline]
    knobs: dict[str, Any]
    repeats: int = 2

    def clean_runs(
        self, events: Sequence[Event], bucket_ms: int
    ) -> tuple[dict[str, Any], list[list[Detection]]]:
        """The clean replay ``repeats`` times with rates on and as often off, alternating (on,
        off, off, on, on, off...): the throughput figures and the rate alerts of each on-run."""
        kafka = self.kafka
        topic = kafka.topic(kafka.name(f"{self.name}-clean"))
        kafka.produce(topic, events, self.stream.texts)
        times = {topic: [e[0] for e in events]}
        runs: list[dict[str, Any]] = []
        clean_sets: list[list[Detection]] = []
        order = [
            rates for r in range(self.repeats) for rates in ((True, False) if r % 2 == 0 else (False, True))
        ]
        for n, rates in enumerate(order):
            label = f"{self.name}-clean-{'on' if rates else 'off'}-{n}"
            run = kafka.run(label, [topic], self.bundle, rates=rates)
            documents = run.pop("documents")
            run["rates"] = rates
            run["rate_records"] = dict(Counter(d["kind"] for d in documents if d.get("rate")))
            if rates:
                found, late = _broker_detections(documents, times, bucket_ms)
                clean_sets.append(found[topic])
                run["wall_clock_silences_after_the_end"] = late
            print(json.dumps({label: run}), file=sys.stderr, flush=True)
            runs.append(run)
        on = [r for r in runs if r["rates"]]
        off = [r for r in runs if not r["rates"]]

        def rate(part: list[dict[str, Any]]) -> float:
            return float(sum(r["events"] for r in part)) / float(sum(r["seconds"] for r in part))

        throughput: dict[str, Any] = {
            "events": len(events),
            "runs": runs,
            "events_per_s_on": round(rate(on), 1),
            "events_per_s_off": round(rate(off), 1),
            "ratio_on_vs_off": round(rate(on) / rate(off), 3),
        }
        # Each adjacent (on, off) pair measured within a minute of each other: less exposed to a
        # load that drifts over the whole series.
        pairs = [
            (a if a["rates"] else b)["events_per_s"] / (b if a["rates"] else a)["events_per_s"]
            for a, b in zip(runs[0::2], runs[1::2], strict=True)
        ]
        throughput["pair_ratios"] = [round(r, 3) for r in pairs]
        throughput["pair_ratio_median"] = round(statistics.median(pairs), 3)
        if min(r["seconds"] for r in runs) < 5:
            throughput["note"] = "runs under 5 s: start-up and broker round trips, not the rule"
        return throughput, clean_sets

    def incident_run(
        self, events: Sequence[Event], incidents: Sequence[Incident], bucket_ms: int
    ) -> tuple[dict[str, Any], list[list[Detection]]]:
        """Every incident in one agent run over several topics (``pack``), each topic the replay
        with its incidents injected, cut an hour after the last: the run's figures and the rate
        alerts of each incident's topic (in the order of ``incidents``)."""
        kafka = self.kafka
        topic_of: dict[int, str] = {}
        streams: dict[str, list[Event]] = {}
        for k, group in enumerate(pack(incidents, bucket_ms)):
            topic = kafka.topic(kafka.name(f"{self.name}-incidents-{k}"))
            horizon = max(i.end_ms for i in group) + HOUR_MS
            streams[topic] = inject_all(events[: bisect.bisect_left(events, (horizon, ""))], group)
            kafka.produce(topic, streams[topic], self.stream.texts)
            for incident in group:
                topic_of[id(incident)] = topic
        if not streams:
            return {"topics": 0}, [[] for _ in incidents]
        run = kafka.run(f"{self.name}-incidents", list(streams), self.bundle, rates=True)
        documents = run.pop("documents")
        times = {t: [e[0] for e in s] for t, s in streams.items()}
        found, late = _broker_detections(documents, times, bucket_ms)
        run["topics"] = len(streams)
        run["events"] = sum(len(s) for s in streams.values())
        run["wall_clock_silences_after_the_end"] = late
        print(json.dumps({f"{self.name}-incidents": run}), file=sys.stderr, flush=True)
        return run, [found.get(topic_of[id(i)], []) for i in incidents]

    def replay(self, events: Sequence[Event], incidents: Sequence[Incident], bucket_ms: int) -> Outcome:
        throughput, clean_sets = self.clean_runs(events, bucket_ms)
        run, broker_found = self.incident_run(events, incidents, bucket_ms)
        # The rule run directly with the seeds the agent took: the same decisions, clean and per
        # incident (each replayed alone from a snapshot at its onset).
        offline = OfflineReplayer(self.knobs, self.seeds).replay(events, incidents, bucket_ms)
        agree = [sorted(map(_as_tuple, s)) for s in clean_sets]
        differ = []
        for incident, by_broker, by_rule in zip(incidents, broker_found, offline.found, strict=True):
            broker_score = score_incident(incident, by_broker, bucket_ms)
            rule_score = score_incident(incident, by_rule, bucket_ms)
            if broker_score != rule_score:
                differ.append(
                    {
                        "kind": incident.kind,
                        "onset": incident.onset_ms,
                        "broker_delay": broker_score["delay_buckets"],
                        "rule_delay": rule_score["delay_buckets"],
                    }
                )
        # What the rule would do if every training template's baseline seeded its key (the
        # tracker's own warm-up gate, from the seed's first event) instead of only those covering
        # the warm-up (RatePartitions.use_seeds).
        everyone = OfflineReplayer(self.knobs, self.all_seeds).replay(events, incidents, bucket_ms)
        rule_check = {
            "on_runs_identical": agree[0] == agree[1],
            "clean_broker_equals_rule": agree[0] == sorted(map(_as_tuple, offline.clean)),
            "clean_rule_alerts": len(offline.clean),
            "incidents_scored_differently_than_the_rule": differ,
            "every_training_template_seeded": {
                "seeded_patterns": len(self.all_seeds),
                "clean_alerts": dict(Counter(d.kind for d in everyone.clean)),
                "incidents": summarise(
                    [score_incident(i, f, bucket_ms) for i, f in zip(incidents, everyone.found, strict=True)]
                ),
            },
        }
        return Outcome(
            clean_sets[0],
            broker_found,
            {"throughput": throughput, "incident_run": run, "rule_check": rule_check},
        )


def _as_tuple(d: Detection) -> tuple[str, str, int]:
    return (d.kind, d.pattern, d.at_ms)


def _broker_detections(
    documents: Sequence[dict[str, Any]], times: dict[str, list[int]], bucket_ms: int
) -> tuple[dict[str, list[Detection]], int]:
    """The spikes and silences of ``documents`` per input topic, at the event time they were
    decided: a spike at its crossing event, a silence at the topic's first event at or after its
    deadline (the first empty bucket + the empty buckets). A silence whose deadline is after the
    topic's last event was decided on the wall clock once the partition went quiet: counted apart."""
    from agent.alerts.partition_rates import template_id

    out: dict[str, list[Detection]] = defaultdict(list)
    late = 0
    for doc in documents:
        kind = doc.get("kind")
        if kind not in ("spike", "silence"):
            continue
        topic = doc["source"]["topic"]
        pattern = template_id(doc["pattern"]["template"])
        if kind == "spike":
            at = int(doc["source"]["timestamp_ms"])
        else:
            rate = doc["rate"]
            deadline = _ms(rate["bucket_start"]) + int(rate["buckets"]) * bucket_ms
            stamps = times[topic]
            i = bisect.bisect_left(stamps, deadline)
            if i == len(stamps):
                late += 1
                continue
            at = stamps[i]
        out[topic].append(Detection(kind, pattern, at))
    return out, late


def broker_set(kafka: Kafka, name: str, args: argparse.Namespace, knobs: dict[str, Any]) -> dict[str, Any]:
    """One data set through the real agent: train on its first day, replay the rest (module doc)."""
    from agent.alerts.partition_rates import template_id
    from agent.model.bundle import load_bundle

    rule = RateTracker(**knobs)
    started, load = time.monotonic(), _load()
    lines = load_lines(name, args.datasets, args.min_days)
    # Training covers the warm-up: up to and including the first line a day after the first, so
    # that train's baselines (learned up to its last event) cover it and seed the keys.
    train_end = lines.times[bisect.bisect_left(lines.times, lines.start_ms + rule.warmup_ms)] + 1
    bundle, learned = train_bundle(kafka.work, name, lines, train_end)
    prepare = load_bundle(bundle).text_prep.prepare
    stream = make_stream(lines, lambda text: template_id(prepare(text)))
    if args.broker_hours is not None:
        cut = bisect.bisect_left(stream.events, (train_end + round(args.broker_hours * HOUR_MS), ""))
        stream = Stream(stream.name, stream.events[:cut], stream.texts, stream.loops)
    seeds = bundle_seeds(bundle, rule.warmup_ms, rule.bucket_ms)
    everyone = bundle_seeds(bundle, 0, rule.bucket_ms)
    replayer = BrokerReplayer(kafka, bundle, name, stream, seeds, everyone, knobs, args.repeats)
    entry = evaluate(
        stream, "seeded", knobs, args.seed, args.per_kind, replayer=lambda _: replayer,
        spike_rate=args.spike_rate, floods=args.floods, train_ms=train_end - lines.start_ms,
    )  # fmt: skip
    entry["lines"] = len(lines.times) // lines.loops
    entry["loops"] = lines.loops
    entry["training"] = learned
    entry["seeded_patterns"] = len(seeds)
    entry["targets"] = targets(entry)
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["load_start_end"] = [load, _load()]
    return entry


def broker_mode(args: argparse.Namespace, knobs: dict[str, Any]) -> dict[str, Any]:
    """Every data set through the real agent, on one local broker."""
    sets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rates-bench-") as tmp:
        work = Path(tmp)
        _shared_helpers()
        from chaos import Broker

        broker = Broker(work / "kafka")
        broker.start()
        try:
            kafka = Kafka(broker, work)
            for name in args.sets:
                sets[name] = broker_set(kafka, name, args, knobs)
                print(json.dumps({name: sets[name]}), file=sys.stderr, flush=True)
        finally:
            broker.stop()
    return sets


# --------------------------------------------------------------------- main


def _iter_sets(names: Sequence[str], datasets: Path, min_days: float) -> Iterator[Stream]:
    for name in names:
        yield load_stream(name, datasets, min_days)


KNOB_NAMES = (
    "bucket_ms",
    "max_keys",
    "fast_half_life_ms",
    "slow_half_life_ms",
    "warmup_ms",
    "spike_alpha",
    "min_count",
    "min_ratio",
    "spike_margin",
    "silence_alpha",
    "gap_margin",
    "steady_within_ms",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=["offline", "broker"],
        default="offline",
        help="offline: the tracker directly; broker: the real agent through the local broker",
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--per-kind", type=int, default=30, help="incidents per kind, data set and mode")
    parser.add_argument("--floods", type=int, default=None, help="floods per data set (default: --per-kind)")
    parser.add_argument(
        "--spike-rate",
        choices=sorted(SPIKE_RATE_WINDOWS),
        default="hour",
        help="a spike's 'its rate': the key's rate over the hour (default) or the day before the onset",
    )
    parser.add_argument("--min-days", type=float, default=2.0, help="loop sets shorter than a day to this")
    parser.add_argument(
        "--broker-hours", type=float, default=None, help="broker: replay only this many hours after training"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="broker: clean runs with rates on, and as many off (alternating)",
    )
    parser.add_argument("--sweep", action="store_true", help="offline: also run the knob sweep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    knobs: dict[str, Any] = {}
    defaults = RateTracker()
    result: dict[str, Any] = {
        "bench": "rates",
        "mode": args.mode,
        "seed": args.seed,
        "per_kind": args.per_kind,
        "floods": args.per_kind if args.floods is None else args.floods,
        "spike_rate": args.spike_rate,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_at_start": _load()},
        "knobs": {name: getattr(defaults, name) for name in KNOB_NAMES},
        "sets": {},
    }
    started = time.monotonic()
    if args.mode == "broker":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        result["broker_hours"] = args.broker_hours
        result["repeats"] = args.repeats
        result["sets"] = broker_mode(args, knobs)
    else:
        streams = list(_iter_sets(args.sets, args.datasets, args.min_days))
        for stream in streams:
            entry: dict[str, Any] = {
                "lines": len(stream.events) // stream.loops,
                "loops": stream.loops,
                "span_days": round((stream.end_ms - stream.start_ms) / DAY_MS, 3),
            }
            for mode in ("online", "seeded"):
                entry[mode] = evaluate(
                    stream,
                    mode,
                    knobs,
                    args.seed,
                    args.per_kind,
                    spike_rate=args.spike_rate,
                    floods=args.floods,
                )
                entry[mode]["targets"] = targets(entry[mode])
            result["sets"][stream.name] = entry
            print(json.dumps({stream.name: entry}), file=sys.stderr, flush=True)
        if args.sweep:
            result["sweep"] = sweep(streams, knobs, args.seed, args.per_kind, args.spike_rate)
    result["machine"]["load_at_end"] = _load()
    result["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
