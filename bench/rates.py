#!/usr/bin/env python3
"""Rate detection benchmark: real logs replayed with their own timestamps, incidents injected.

Prints one JSON object (and writes it to ``--out``). Per data set and per mode:

- ``online``: the tracker learns from the replay's first event (every key warms up);
- ``seeded``: the replay's first ``warmup_ms`` of event time (1 day) is training data — each
  pattern's baseline is ``RateTracker.learn``-ed from it and seeds the key, which may then alert
  at once — and the rest is replayed.

Data sets (``--datasets``, default ``../shared/datasets``): ``hdfs_sessions`` (111k HDFS lines,
39 h), the loghub 2k samples ``hdfs_2k`` (38 h), ``bgl_2k`` (213 days), ``thunderbird_2k``
(12 min, so it is looped back to back — each copy shifted by the sample's span plus one second
— to cover ``--min-days``). The pattern of a line is its masked text
(``TextPreparation(mask=True)``, BGL/Thunderbird without their label column), its key
``exporters.alerts.pattern_id``. Every line keeps its own timestamp as its event time.

**Incidents** (planned with ``--seed``, each replayed on its own from a checkpoint of the clean
replay taken just before its onset, so incidents never overlap): a known pattern at 10×, 20× and
50× its rate for 5 minutes (its rate: its events in the 24 h before the onset, per minute; the
extra events evenly spaced; patterns with at least one event per 10 minutes); a **steady**
pattern silent for 15 minutes (steady, by this oracle: no gap as long as the silence in the 24 h
before, and at its rate over the hour before a 15-minute silence becomes improbable —
``P(no event) < alpha`` under Poisson at that rate, ``alpha`` = the rule's default
``silence_alpha`` — at least 2 buckets before it ends); a **busy** pattern (the 3 busiest, e.g.
HDFS's write path) silent for 20 minutes from the start of its busiest hour; every pattern of the
source at 5× for 5 minutes (a flood). Onsets fall where keys may alert: from an hour after the
warm-up (online) or the training day (seeded) to an hour before the end.

Figures per data set and mode: for each incident kind the recall within 2 buckets (spikes and
floods: of the onset; silences: of the oracle's improbable point) and during the incident at
all, the delay in buckets (p50/max; silences also from the onset); ``false_per_day``: rate
alerts of the clean replay (no injection; every alert is false) per day of replay, and per day of
*alertable* replay (after the warm-up, or the training day); ``us_per_event``: the clean
replay's loop — ``observe`` per record at the running maximum of the timestamps, ``commit`` per
1,024 records, as the pipeline will call them — divided by its events (the checkpoints' snapshots
left out). A spike incident is **detectable** when the surge is statistically visible within one
bucket (its count per bucket reaches the count that Poisson at the key's rate puts below 1e-6)
and beyond the key's busiest minute of the day before (else the key does that on its own); the
figures give the recall over all incidents and over the detectable ones. ``targets`` sums up
issue 17's targets per data set and mode.

``--sweep`` also runs the knob sweep that chose the defaults (one knob at a time around them):
the clean replays' false alerts and the pooled recalls for each value.

Replays go through a ``Replayer``: ``OfflineReplayer`` drives ``RateTracker`` directly (no Kafka).
A broker replayer (``--mode broker``, a later step of issue 17) implements the same two calls
through the real agent: ``clean`` (the stream as Kafka records with their timestamps; the rate
alerts read back) and ``incident`` (the stream with one incident injected); planning, injection
and scoring are shared.
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
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
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

Event = tuple[int, str]  # (event time ms, pattern id)


# --------------------------------------------------------------------- data


@dataclass
class Stream:
    name: str
    events: list[Event]
    templates: dict[str, str]
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


def load_stream(name: str, datasets: Path, min_days: float) -> Stream:
    """The data set's lines as (timestamp ms, pattern id), in time order (stable)."""
    path = datasets / FILES[name]
    opener = gzip.open if path.suffix == ".gz" else open
    prep = TextPreparation(mask=True)
    ids: dict[str, str] = {}
    events: list[Event] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if name.startswith("hdfs"):
                ts, text = _hdfs_time(line), line
            else:  # loghub BGL/Thunderbird: "<label> <epoch seconds> ...", the label is not text
                rest = line.split(" ", 1)[1]
                ts, text = int(rest.split(" ", 1)[0]) * 1000, rest
            template = prep.prepare(text)
            pid = ids.get(template)
            if pid is None:
                pid = ids[template] = pattern_id(MODEL_ID, template)
            events.append((ts, pid))
    events.sort(key=lambda e: e[0])
    span = events[-1][0] - events[0][0] + 1000
    loops = max(1, math.ceil(min_days * DAY_MS / span)) if span < DAY_MS else 1
    if loops > 1:
        events = [(ts + i * span, pid) for i in range(loops) for ts, pid in events]
    return Stream(name, events, {pid: t for t, pid in ids.items()}, loops)


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

    @property
    def end_ms(self) -> int:
        return self.onset_ms + self.duration_ms


class History:
    """Per-pattern sorted event times, for the oracles (counts in windows, largest gaps)."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.times: dict[str, list[int]] = defaultdict(list)
        for ts, pid in events:
            self.times[pid].append(ts)

    def count(self, pid: str, lo: int, hi: int) -> int:
        times = self.times[pid]
        return bisect.bisect_left(times, hi) - bisect.bisect_left(times, lo)

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
    stream: Stream, lo_ms: int, hi_ms: int, rng: random.Random, per_kind: int
) -> list[Incident]:
    """``per_kind`` incidents of each kind with onsets in [lo_ms, hi_ms) (see the module doc)."""
    if hi_ms <= lo_ms:
        return []
    history = History(stream.events)
    out: list[Incident] = []
    for kind in SPIKES:
        for _ in range(per_kind * 10):  # tries
            if sum(1 for i in out if i.kind == kind) >= per_kind:
                break
            onset = rng.randrange(lo_ms, hi_ms) // 1000 * 1000
            rates = {pid: history.count(pid, onset - DAY_MS, onset) / (24 * 60) for pid in history.times}
            known = sorted(pid for pid, rate in rates.items() if rate >= 0.1)
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
                        peak_ratio=round(surge / busiest, 3),
                        visible=visible,
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
    volume = Counter(pid for _, pid in stream.events)
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
    for _ in range(per_kind):
        onset = rng.randrange(lo_ms, hi_ms) // 1000 * 1000
        total = sum(history.count(pid, onset - HOUR_MS, onset) for pid in history.times) / 60
        out.append(Incident(f"flood{FLOOD}", None, onset, SPIKE_MS, total))
    return sorted(out, key=lambda i: (i.onset_ms, i.kind, i.key or ""))


def inject(events: Sequence[Event], incident: Incident) -> list[Event]:
    """``events`` (those from the incident's onset on) with the incident applied."""
    lo, hi = incident.onset_ms, incident.end_ms
    if incident.kind in SPIKES:
        assert incident.key is not None
        extra = round((SPIKES[incident.kind] - 1) * incident.rate_per_min * incident.duration_ms / MINUTE_MS)
        added = [(lo + (i * incident.duration_ms) // max(extra, 1), incident.key) for i in range(extra)]
        return sorted([*events, *added], key=lambda e: e[0])
    if incident.kind.endswith("silence"):
        return [e for e in events if not (e[1] == incident.key and lo <= e[0] < hi)]
    out: list[Event] = []
    for e in events:
        out.extend([e] * (FLOOD if lo <= e[0] < hi else 1))
    return out


# --------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Detection:
    """One rate alert as the benchmark scores it (an offline decision or, later, an alert record)."""

    kind: str
    pattern: str
    at_ms: int


@dataclass
class Replayed:
    detections: list[Detection]
    seconds: float
    events: int


class Replayer(Protocol):
    """How a stream reaches the rule: ``OfflineReplayer`` (the tracker, directly) now; a broker
    replayer (the real agent, through Kafka) implements the same calls later."""

    def clean(self, events: Sequence[Event], checkpoints: Sequence[int]) -> Replayed: ...

    def incident(self, incident: Incident, events: Sequence[Event]) -> list[Detection]: ...


def _key(pid: str) -> RateKey:
    return ("bench", 0, pid, ())


def _detections(decisions: Sequence[RateDecision]) -> list[Detection]:
    return [Detection(d.kind, d.key[2], d.at_ms) for d in decisions]


BATCH = 1024  # records per transaction, as the pipeline's default batch.max_size


@dataclass
class OfflineReplayer:
    """Drives a ``RateTracker`` the way the pipeline will: per record ``observe`` at the running
    maximum of the timestamps, ``commit`` after every ``BATCH`` records. ``clean`` snapshots the
    tracker at each checkpoint (an incident's onset); ``incident`` restores a fresh tracker from
    that snapshot, as a restarted agent restores its changelog, and replays the injected events."""

    knobs: dict[str, Any]
    seeds: dict[str, Baseline]
    _copies: dict[int, tuple[dict[RateKey, RateState], int]] = field(default_factory=dict)

    def clean(self, events: Sequence[Event], checkpoints: Sequence[int]) -> Replayed:
        tracker = RateTracker(**self.knobs)
        seeds = self.seeds
        pending = sorted(set(checkpoints), reverse=True)
        decisions: list[RateDecision] = []
        event_time = -1
        observe, commit = tracker.observe, tracker.commit
        started, snapshots = time.perf_counter(), 0.0
        for n, (ts, pid) in enumerate(events):
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
        return Replayed(_detections(decisions), time.perf_counter() - started - snapshots, len(events))

    def incident(self, incident: Incident, events: Sequence[Event]) -> list[Detection]:
        states, event_time = self._copies[incident.onset_ms]
        tracker = RateTracker(**self.knobs)
        for key, state in states.items():
            tracker.restore(key, state)
        decisions: list[RateDecision] = []
        for n, (ts, pid) in enumerate(events):
            event_time = max(event_time, ts)
            decisions.extend(tracker.observe(_key(pid), event_time, seed=self.seeds.get(pid)))
            if n % BATCH == BATCH - 1:
                tracker.commit()
        return _detections(decisions)


# --------------------------------------------------------------------- scoring


def _window(events: Sequence[Event], lo: int, hi: int) -> list[Event]:
    """The events with ``lo <= time < hi`` (``events`` sorted by time; pattern ids sort after "")."""
    return list(events[bisect.bisect_left(events, (lo, "")) : bisect.bisect_left(events, (hi, ""))])


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


def evaluate(stream: Stream, mode: str, knobs: dict[str, Any], seed: int, per_kind: int) -> dict[str, Any]:
    """One data set in one mode: the clean replay and every incident."""
    tracker_defaults = RateTracker(**knobs)
    bucket_ms, warmup_ms = tracker_defaults.bucket_ms, tracker_defaults.warmup_ms
    events = stream.events
    seeds: dict[str, Baseline] = {}
    if mode == "seeded":
        train_end = stream.start_ms + warmup_ms
        history = History([e for e in events if e[0] < train_end])
        for pid, times in history.times.items():
            baseline = tracker_defaults.learn(times, until_ms=train_end - 1)
            if baseline is not None:
                seeds[pid] = baseline
        events = [e for e in events if e[0] >= train_end]
        alertable_from = train_end
    else:
        alertable_from = stream.start_ms + warmup_ms
    replay_ms = events[-1][0] - events[0][0]
    alertable_ms = max(0, stream.end_ms - alertable_from)
    incidents = plan_incidents(
        stream,
        alertable_from + HOUR_MS,
        stream.end_ms - HOUR_MS,
        random.Random(f"{seed}-{stream.name}-{mode}"),
        per_kind,
    )
    replayer = OfflineReplayer(knobs, seeds)
    clean = replayer.clean(events, [i.onset_ms for i in incidents])
    kinds = Counter(d.kind for d in clean.detections)
    scored = []
    for incident in incidents:
        horizon = incident.end_ms + 3 * bucket_ms
        window = _window(events, incident.onset_ms, horizon)
        found = replayer.incident(incident, inject(window, incident))
        scored.append(score_incident(incident, found, bucket_ms))
    days, alertable_days = replay_ms / DAY_MS, alertable_ms / DAY_MS
    return {
        "events": len(events),
        "patterns": len({pid for _, pid in events}),
        "replay_days": round(days, 3),
        "alertable_days": round(alertable_days, 3),
        "seeded_patterns": len(seeds),
        "clean_alerts": dict(kinds),
        "false_per_day": round(len(clean.detections) / days, 3) if days else None,
        "false_per_alertable_day": round(len(clean.detections) / alertable_days, 3)
        if alertable_days
        else None,
        "us_per_event": round(clean.seconds / clean.events * 1e6, 2),
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
    return out


# --------------------------------------------------------------------- sweep

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


def sweep(streams: Sequence[Stream], base: dict[str, Any], seed: int, per_kind: int) -> list[dict[str, Any]]:
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
                    result = evaluate(stream, mode, knobs, seed, per_kind)
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


# --------------------------------------------------------------------- main


def _iter_sets(names: Sequence[str], datasets: Path, min_days: float) -> Iterator[Stream]:
    for name in names:
        yield load_stream(name, datasets, min_days)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=["offline"], default="offline", help="offline: the tracker directly"
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--per-kind", type=int, default=30, help="incidents per kind, data set and mode")
    parser.add_argument("--min-days", type=float, default=2.0, help="loop sets shorter than a day to this")
    parser.add_argument("--sweep", action="store_true", help="also run the knob sweep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    streams = list(_iter_sets(args.sets, args.datasets, args.min_days))
    knobs: dict[str, Any] = {}
    defaults = RateTracker()
    result: dict[str, Any] = {
        "bench": "rates",
        "mode": args.mode,
        "seed": args.seed,
        "per_kind": args.per_kind,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "knobs": {
            name: getattr(defaults, name)
            for name in (
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
        },
        "sets": {},
    }
    for stream in streams:
        entry: dict[str, Any] = {
            "lines": len(stream.events) // stream.loops,
            "loops": stream.loops,
            "span_days": round((stream.end_ms - stream.start_ms) / DAY_MS, 3),
        }
        for mode in ("online", "seeded"):
            entry[mode] = evaluate(stream, mode, knobs, args.seed, args.per_kind)
            entry[mode]["targets"] = targets(entry[mode])
        result["sets"][stream.name] = entry
        print(json.dumps({stream.name: entry}), file=sys.stderr, flush=True)
    if args.sweep:
        result["sweep"] = sweep(streams, knobs, args.seed, args.per_kind)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
