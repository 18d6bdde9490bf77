"""Session anomalies on HDFS block sessions (issue 18): quality, latency of detection, cost, memory; JSON.

Data: ``../shared/datasets/hdfs_sessions`` (111,405 HDFS lines in time order over 39 h, 5,736
blocks, ``anomaly_label.csv`` with 175 anomalous). A block id (``blk_-?\\d+`` in the raw line) is
the session key; the line's own ``yymmdd HHMMSS`` is its event time. Every record goes through
``training.sessions`` — the agent's masking, session key, ``SessionTracker`` windows and scoring
— so a flag here is what the agent decides on the same stream.

Splits (labels are per block, so a block is flagged when any of its sessions is):

``lines``  the issue's split: fit on the normal blocks whose first line is in the first half of
           the lines, test on the 3,049 blocks starting in the second half (63 anomalous);
``time``   the same by the midpoint of the time range (more, later-starting test blocks);
``folds``  5 folds by block (seeded), fit on the normal blocks of the other four: 63 test
           anomalies make one split noisy.

Per split: AUROC and AP of the block scores, precision / recall / F1 **at the calibrated
threshold** (score > 1.0, no tuning on test data), the share of detected anomalous blocks that a
decisive step flagged before its session closed, and the anchors fitted on the same blocks, on
whole blocks as the issue measured them: PCA residual of the template-count vector (Xu et al.
2009: counts centred, the principal components covering 95 % of the variance, squared residual)
and unseen template bigrams (share of a block's bigrams never seen in a normal training block),
with their best possible F1. Also the per-event cost of ``SessionModel.step`` and of
``SessionTracker.event``, the per-session cost of the close, and memory per open session
(tracemalloc, 100,000 open sessions; the process RSS with them open). ``--grid`` adds the
sensitivity to the gap, the model order and the target FPR on the ``lines`` split and the folds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sessions.py [--gap-seconds 3600] [--order 2]
        [--target-fpr 0.002] [--grid] [--out FILE]

``--mode broker``: the agent through a real broker (``deploy/local/kafka.sh``, or
``$KAFKA_BOOTSTRAP_SERVERS``) on the ``lines`` test stream. A ``knn`` bundle is trained through
the CLI on the other lines (``train --session-key-pattern --session-time-field time
--session-labels --validation-fraction 0``: the session model of the offline figures, fitted on
every normal training block); the test blocks' lines are produced once to a 4-partition topic
with the block id as the record key and the line's time (shifted by whole minutes so that the
stream ended three hours ago) as the Kafka timestamp. Then:

- ``equality``: ``anomaly-agent run`` with ``alerts.group_by = "event"`` (one alert per event)
  and ``[sessions] enabled``; once the group has committed the stream and every session has
  closed (those open at the end on the wall clock), its ``session`` alerts read
  ``read_committed`` against ``anomaly-agent score --sessions`` on the same bundle and stream:
  id, key, partition, first and last offset, decisive, events, signature and score (|diff| ≤ 1e-6);
- ``throughput``: ``--pairs`` pairs of runs with ``[sessions] enabled`` false and true,
  alternating (off, on, on, off, ...), each with a fresh group and alert topic on the same input
  and the product's grouping (by pattern), timed as ``bench/replay.py`` times them (first
  consumed record to the group's committed offsets at the end): events/s per run, the ratio per
  pair, the ratio of the medians (target ≥ 0.8), load averages before and after each run, the
  agent's stage seconds and the state changelog's records;
- ``rss``: ``--rss-sessions`` (100,000) synthetic blocks — the first ``--rss-lines-per-session``
  (3) lines of a replayed block each, its block id replaced by a new one, all stamped now so that
  none closes within the gap — through the agent with sessions on, then off on the same input:
  the process's VmHWM and VmRSS from ``/proc/<pid>/status`` (sampled every 0.25 s) and the
  ``anomaly_agent_sessions_open`` gauge, which must read all of them open (target ≤ 600 MiB).

    flock /tmp/kaa-bench.lock env OMP_NUM_THREADS=1 .venv/bin/python bench/sessions.py --mode broker
        [--pairs 3] [--rss-sessions 100000] [--rss-lines-per-session 3] [--threads 2] [--out FILE]

JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.alerts.sessions import SessionTracker  # noqa: E402
from agent.model.sessions import (  # noqa: E402
    DEFAULT_ORDER,
    DEFAULT_TARGET_FPR,
    SessionModel,
    SessionWindows,
)
from agent.model.textprep import TextPreparation  # noqa: E402
from training.records import Record  # noqa: E402
from training.sessions import (  # noqa: E402
    SessionEvent,
    evaluate_sessions,
    fit_sessions,
    read_session_labels,
    score_sessions,
    session_events,
)

DATA = REPO.parent / "shared" / "datasets" / "hdfs_sessions"
KEY_PATTERN = r"(blk_-?\d+)"
#: HDFS blocks live for up to 15 h in this sample: the cap must not cut a block's life short.
MAX_SECONDS = 2 * 86_400.0
FOLDS = 5
OPEN_SESSIONS = 100_000


def load(data: Path) -> tuple[list[SessionEvent], dict[str, bool]]:
    """The HDFS lines as session events (line numbers from 1, event time from the line itself)."""
    records = []
    with gzip.open(data / "HDFS_sessions.log.gz", "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.rstrip("\n")
            moment = datetime.strptime(text[:13], "%y%m%d %H%M%S").replace(tzinfo=UTC)
            records.append(Record(number, {"text": text, "time_ms": round(moment.timestamp() * 1000)}))
    events = session_events(
        records,
        TextPreparation(),
        data / "HDFS_sessions.log.gz",
        key_pattern=KEY_PATTERN,
        time_field="time_ms",
    )
    return events, read_session_labels(data / "anomaly_label.csv")


def splits(events: Sequence[SessionEvent], labels: dict[str, bool], seed: int) -> dict[str, list[set[str]]]:
    """Test keys of each split (``folds``: one set per fold); the rest are training keys."""
    first_line: dict[str, int] = {}
    first_time: dict[str, int] = {}
    for e in events:
        if e.key is not None and e.key not in first_line:
            first_line[e.key] = e.line
            first_time[e.key] = e.timestamp_ms or 0
    times = [e.timestamp_ms or 0 for e in events]
    middle_line = len(events) / 2
    middle_time = (min(times) + max(times)) / 2
    keys = sorted(k for k in first_line if k in labels)
    order = np.random.default_rng(seed).permutation(len(keys))
    return {
        "lines": [{k for k in keys if first_line[k] > middle_line}],
        "time": [{k for k in keys if first_time[k] >= middle_time}],
        "folds": [{keys[i] for i in fold.tolist()} for fold in np.array_split(order, FOLDS)],
    }


def run_split(
    events: Sequence[SessionEvent],
    labels: dict[str, bool],
    test: set[str],
    windows: SessionWindows,
    order: int,
    target_fpr: float,
    seed: int,
) -> dict[str, Any]:
    """Fit on the normal training blocks, score the whole stream as the agent would, evaluate the
    test blocks; the anchors on the same blocks."""
    train_events = [e for e in events if e.key is not None and e.key not in test]
    started = time.perf_counter()
    model, summary = fit_sessions(
        train_events,
        windows=windows,
        labels=labels,
        order=order,
        target_fpr=target_fpr,
        validation_fraction=0.0,
        seed=seed,
    )
    fit_s = time.perf_counter() - started
    rows = [row for row in score_sessions(model, events) if row["session"] in test]
    figures = evaluate_sessions(rows, {k: labels[k] for k in test})
    normal_train = {e.key for e in train_events if e.key is not None and not labels.get(e.key, False)}
    return {
        "test_keys": len(test),
        "test_anomalous": sum(labels[k] for k in test),
        "fit_sessions": summary["fit_sessions"],
        "fit_seconds": round(fit_s, 2),
        "threshold": round(model.threshold, 4),
        "decisive_surprise": model.describe()["decisive_surprise"],
        "sessions": _figures(figures),
        "anchors": anchors(events, labels, normal_train, test),
    }


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "auroc",
        "average_precision",
        "precision",
        "recall",
        "f1",
        "false_positive_rate",
        "decisive_share",
    )
    out: dict[str, Any] = {k: None if metrics[k] is None else round(float(metrics[k]), 4) for k in keep}
    counts = metrics["counts"]
    out["counts"] = {k: counts[k] for k in ("normal", "anomalous", "tp", "fp", "fn")}
    return out


# --------------------------------------------------------------------- anchors


def anchors(
    events: Sequence[SessionEvent], labels: dict[str, bool], train: set[str], test: set[str]
) -> dict[str, Any]:
    """PCA residual of the template counts and unseen template bigrams, on whole blocks."""
    sequences: dict[str, list[int]] = {}
    for e in events:
        if e.key is not None and (e.key in train or e.key in test):
            sequences.setdefault(e.key, []).append(e.pattern)
    vocab = {p: i for i, p in enumerate(sorted({p for k in train for p in sequences[k]}))}
    tests = sorted(test)
    truth = np.array([labels[k] for k in tests], dtype=bool)

    def counts(keys: Sequence[str]) -> npt.NDArray[np.float64]:
        matrix = np.zeros((len(keys), len(vocab) + 1), dtype=np.float64)
        for row, key in enumerate(keys):
            for p in sequences[key]:
                matrix[row, vocab.get(p, len(vocab))] += 1.0
        return matrix

    from sklearn.decomposition import PCA

    fitted = counts(sorted(train))
    mean = fitted.mean(axis=0)
    pca = PCA(n_components=0.95, svd_solver="full").fit(fitted - mean)
    centred = counts(tests) - mean
    residual = centred - (centred @ pca.components_.T) @ pca.components_
    spe = np.sum(residual**2, axis=1)

    seen = {(a, b) for k in train for a, b in _bigrams(sequences[k])}
    unseen = np.array(
        [np.mean([pair not in seen for pair in _bigrams(sequences[k])]) for k in tests], dtype=np.float64
    )
    return {"pca_residual": _ranking(spe, truth), "unseen_bigrams": _ranking(unseen, truth)}


def _bigrams(sequence: Sequence[int]) -> list[tuple[int, int]]:
    padded = [-1, *sequence, -2]  # the start and the end count as steps
    return list(pairwise(padded))


def _ranking(scores: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    precision, recall, _ = precision_recall_curve(truth, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {
        "auroc": round(float(roc_auc_score(truth, scores)), 4),
        "average_precision": round(float(average_precision_score(truth, scores)), 4),
        "best_f1": round(float(f1.max()), 4),
    }


# --------------------------------------------------------------------- cost and memory


def costs(model: SessionModel, events: Sequence[SessionEvent]) -> dict[str, Any]:
    """µs per ``SessionModel.step`` and per ``SessionTracker.event`` (one record, closes included,
    batches of 500 committed), µs per close, on the whole stream (best of 3 runs)."""
    steps = [(e.key, e.pattern) for e in events if e.key is not None]

    def tracker_run() -> float:
        tracker = SessionTracker(model, "bench", 0)
        started = time.perf_counter()
        for n, e in enumerate(events):
            tracker.event(e.key, e.pattern, timestamp_ms=e.timestamp_ms or 0, offset=e.line, text=e.prepared)
            if n % 500 == 499:
                tracker.changes()
                tracker.commit()
        tracker.close_all()
        return (time.perf_counter() - started) / len(events)

    step_us = min(_step_only(model, steps) for _ in range(3)) * 1e6
    close_us = min(_close_only(model, steps) for _ in range(3)) * 1e6
    tracker_us = min(tracker_run() for _ in range(3)) * 1e6
    return {
        "step_us_per_event": round(step_us, 2),
        "close_us_per_session": round(close_us, 1),
        "tracker_us_per_record": round(tracker_us, 2),
        "tracker_includes": "event time, windows, model step, runs, undo copies, closes, changelog encoding",
    }


def _step_only(model: SessionModel, steps: Sequence[tuple[str | None, int]]) -> float:
    states: dict[str | None, Any] = {}
    for key in {k for k, _ in steps}:
        states[key] = model.new_state()
    started = time.perf_counter()
    for key, pattern in steps:
        model.step(states[key], pattern)
    return (time.perf_counter() - started) / len(steps)


def _close_only(model: SessionModel, steps: Sequence[tuple[str | None, int]]) -> float:
    states: dict[str | None, Any] = {}
    for key, pattern in steps:
        state = states.get(key)
        if state is None:
            state = states[key] = model.new_state()
        model.step(state, pattern)
    started = time.perf_counter()
    for state in states.values():
        model.close(state, "gap")
    return (time.perf_counter() - started) / len(states)


def memory(
    model: SessionModel, events: Sequence[SessionEvent], sessions: int = OPEN_SESSIONS
) -> dict[str, Any]:
    """Open ``sessions`` sessions at once (each replays the first 10 events of a real block under
    its own key, all at one timestamp so none closes) and measure them: tracemalloc bytes per open
    session here, and in a fresh process (``--rss-child``) that loads the saved model, its RSS
    before and with them open."""
    by_key: dict[str, list[tuple[int, str]]] = {}
    for e in events:
        if e.key is not None:
            by_key.setdefault(e.key, []).append((e.pattern, e.prepared))
    blocks = [v[:10] for v in by_key.values()]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracker = _fill(model, blocks, sessions)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(tracker) == sessions
    fed = sum(len(blocks[n % len(blocks)]) for n in range(sessions))
    del tracker
    with tempfile.TemporaryDirectory() as work:
        model.save(Path(work) / "model")
        (Path(work) / "blocks.json").write_text(json.dumps(blocks), encoding="utf-8")
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", work, "--sessions", str(sessions)],
            check=True,
            capture_output=True,
            text=True,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
    rss = json.loads(child.stdout)
    return {
        "open_sessions": sessions,
        "events_per_session": round(fed / sessions, 1),
        "bytes_per_open_session": round(traced / sessions),
        "traced_mib": round(traced / 2**20, 1),
        "fresh_process_rss_mib": rss,
    }


def _fill(model: SessionModel, blocks: Sequence[Sequence[tuple[int, str]]], sessions: int) -> SessionTracker:
    tracker = SessionTracker(model, "bench", 0, max_open=sessions)
    offset = 0
    for n in range(sessions):
        for pattern, text in blocks[n % len(blocks)]:
            tracker.event(f"blk_{n}", pattern, timestamp_ms=0, offset=offset, text=text)
            offset += 1
        if n % 1000 == 999:
            tracker.commit()
    tracker.commit()
    return tracker


def rss_child(work: Path, sessions: int) -> dict[str, float]:
    """In a fresh process: RSS (MiB) with the model loaded, then with ``sessions`` open."""
    model = SessionModel.load(work / "model")
    blocks = [
        [(int(p), str(t)) for p, t in block] for block in json.loads((work / "blocks.json").read_text())
    ]
    loaded = _rss_mib()
    tracker = _fill(model, blocks, sessions)
    assert len(tracker) == sessions
    return {"model_loaded": round(loaded, 1), "sessions_open": round(_rss_mib(), 1)}


def _rss_mib() -> float:
    """This process's resident set now (MiB), from /proc (``ru_maxrss`` would carry the parent's
    peak over ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------- the broker run

BROKER_ENDED_AGO_MS = 3 * 3_600_000  # the replay's last line: three hours ago (event time)
BROKER_TIMEOUT_S = 600.0  # against hangs only
SYNTHETIC_BLOCK = 7_000_000_000_000_000_000  # synthetic block ids: blk_7000000000000000000 + n


def _broker_imports() -> None:
    """The shared Kafka helpers: tests/agent_helpers.py, bench/chaos.py, bench/replay.py."""
    for path in (REPO / "bench", REPO / "tests"):
        if str(path) not in sys.path:
            sys.path.append(str(path))


def _progress(what: str, **figures: Any) -> None:
    print(
        json.dumps({"at": datetime.now(UTC).strftime("%H:%M:%S"), "what": what, **figures}),
        file=sys.stderr,
        flush=True,
    )


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _ExternalBroker:
    """``$KAFKA_BOOTSTRAP_SERVERS``: a broker this run neither starts nor measures."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.state = Path("/nonexistent")  # replay._cpu_seconds then reports 0.0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _hdfs_replay(data: Path, test: set[str]) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """(replayed records ``{"text", "time"}`` in line order, their block ids, training records): the
    ``lines`` split — the lines of the test blocks are replayed, every other line trains — with
    every time shifted by whole minutes so that the replay ended ``BROKER_ENDED_AGO_MS`` ago."""
    import re

    key = re.compile(KEY_PATTERN)
    rows: list[tuple[str, int, str | None]] = []
    with gzip.open(data / "HDFS_sessions.log.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            text = line.rstrip("\n")
            moment = datetime.strptime(text[:13], "%y%m%d %H%M%S").replace(tzinfo=UTC)
            found = key.search(text)
            rows.append((text, round(moment.timestamp() * 1000), None if found is None else found.group(1)))
    last = max(t for _, t, k in rows if k in test)
    shift = (int(time.time() * 1000) - BROKER_ENDED_AGO_MS) // 60_000 * 60_000 - last
    replay = [({"text": text, "time": t + shift}, k) for text, t, k in rows if k in test]
    train = [{"text": text, "time": t + shift} for text, t, k in rows if k not in test]
    return [r for r, _ in replay], [k for _, k in replay if k is not None], train


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _produce_keyed(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, int]]
) -> list[tuple[int, int]]:
    """Produce (key, value, timestamp ms) in order, idempotently; each record's (partition, offset)."""
    from agent_helpers import produce

    return produce(
        bootstrap,
        topic,
        [(k, v, None) for k, v, _ in records],
        timestamps=[t for _, _, t in records],
        flush_s=300,
    )


def _create_topic(bootstrap: str, name: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions)], operation_timeout=30)[name].result(
        timeout=60
    )
    return name


def _caught_up(bootstrap: str, group: str, topic: str) -> bool:
    from agent_helpers import offsets
    from confluent_kafka import KafkaException

    try:
        committed, ends = offsets(bootstrap, group, topic)
    except KafkaException:
        return False
    return all(committed.get(p, -1) >= end for p, end in ends.items())


def _records(bootstrap: str, topic: str) -> int | None:
    """The records ``topic`` holds (the sum of its partitions' high watermarks), None if missing."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{time.monotonic_ns()}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.partitions
        )
    finally:
        consumer.close()


def _wait(predicate: Any, what: str, timeout: float = BROKER_TIMEOUT_S, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"sessions: timed out waiting for {what}")
        time.sleep(interval)


def equality_run(
    run: Any,
    bundle: Path,
    topic: str,
    positions: Sequence[tuple[int, int]],
    offline: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The agent (one alert per event) on the replay: its session alerts against the offline flags
    of ``score --sessions`` (id, key, partition, first and last offset, decisive, events, score)."""
    from agent_helpers import expected_session_alerts, published_session_alerts, read_committed

    flagged = [row for row in offline if row["is_anomaly"]]
    expected = expected_session_alerts(topic, positions, flagged)
    topics = run.topics("equality", topic)
    load = _loadavg()
    agent = run.agent(
        topics,
        bundle,
        "equality-agent",
        alerts__group_by="event",
        sessions__enabled="true",
        sessions__key_pattern=KEY_PATTERN,
    )
    started = time.monotonic()
    try:
        agent.wait_ready()
        _wait(lambda: _caught_up(run.broker.bootstrap, topics.group, topic), "the equality run to commit")
        # The sessions still open at the end of the input close on the wall clock once their
        # partition is quiet (offline: end_of_input, the same score).
        _wait(
            lambda: (
                sum(
                    v
                    for k, v in agent.metrics().items()
                    if k.startswith("anomaly_agent_sessions_closed_total")
                )
                >= len(offline)
            ),
            "every session to close",
        )
        closed = {
            k: v
            for k, v in agent.metrics().items()
            if k.startswith("anomaly_agent_sessions_closed_total") and v
        }
        docs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            docs = [
                json.loads(m.value() or b"")
                for m in read_committed(run.broker.bootstrap, topics.alerts, quiet_s=1.0)
            ]
            if sum(d["kind"] == "session" for d in docs) >= len(expected):
                break
            time.sleep(1.0)
        seconds = time.monotonic() - started
        code = agent.terminate(timeout=60)
    finally:
        if agent.proc.poll() is None:
            agent.kill()
    got = published_session_alerts(docs)
    exact = {k: {**v, "score": None} for k, v in got.items()} == {
        k: {**v, "score": None} for k, v in expected.items()
    }
    diffs = [
        abs(got[k]["score"] - v["score"]) for k, v in expected.items() if k in got and v["score"] is not None
    ]
    max_diff = max(diffs, default=0.0)
    return {
        "group_by": "event",
        "offline_sessions": len(offline),
        "offline_flagged": len(flagged),
        "offline_flagged_decisive": sum(bool(r["decisive"]) for r in flagged),
        "agent_session_alerts": len(got),
        "agent_line_alerts": sum(d["kind"] == "alert" for d in docs),
        "agent_sessions_closed": closed,
        "missing": sorted(expected.keys() - got.keys())[:10],
        "extra": sorted(got.keys() - expected.keys())[:10],
        "max_score_abs_diff": max_diff,
        "equal": exact and max_diff <= 1e-6,
        "seconds": round(seconds, 1),
        "exit_code": code,
        "load_before_after": [load, _loadavg()],
    }


def throughput_runs(run: Any, bundle: Path, topic: str, events: int, pairs: int) -> dict[str, Any]:
    """Sessions off and on, alternating (off, on, on, off, ...), each with a fresh group and alert
    topic on the already produced replay: ``bench/replay.py``'s end-to-end clock (first consumed
    record to the group's committed offsets at the end), the product's grouping (by pattern)."""
    from replay import end_to_end

    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(pairs):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            result = end_to_end(
                run,
                bundle,
                [""] * events,
                f"sessions-{name}-{r}",
                topic,
                sessions__enabled="true" if name == "on" else "false",
                sessions__key_pattern=KEY_PATTERN,
            )
            # The state changelog's records in this run (open sessions are written there in every
            # transaction that changes them): run.topics named this run's alert topic.
            result["changelog_records"] = _records(
                run.broker.bootstrap, f"replay-sessions-{name}-{r}-{run._n}-alerts.groups"
            )
            runs[name].append(result)
            _progress(
                f"throughput sessions {name}",
                run=r,
                events_per_s=result["events_per_s"],
                load=result["load_before_after"],
            )
    import statistics

    per_pair = [
        round(on["events_per_s"] / off["events_per_s"], 3)
        for on, off in zip(runs["on"], runs["off"], strict=True)
    ]
    ratio = statistics.median(x["events_per_s"] for x in runs["on"]) / statistics.median(
        x["events_per_s"] for x in runs["off"]
    )
    return {
        "events": events,
        "group_by": "pattern",
        "order": "off,on then on,off alternating",
        "sessions_off": runs["off"],
        "sessions_on": runs["on"],
        "events_per_s_off": [x["events_per_s"] for x in runs["off"]],
        "events_per_s_on": [x["events_per_s"] for x in runs["on"]],
        "ratio_per_pair": per_pair,
        "ratio_of_medians": round(ratio, 3),
        "target": ">= 0.8",
        "met": ratio >= 0.8,
    }


def synthetic_sessions(
    replay: Sequence[dict[str, Any]], keys: Sequence[str], sessions: int, per_session: int
) -> list[tuple[bytes, bytes, int]]:
    """``sessions`` new block ids, each the first ``per_session`` lines of a replayed block (its
    HDFS templates) with the block id replaced, all stamped now: none closes within the hour's gap.
    Session n's lines follow each other; the next session starts after."""
    firsts: dict[str, list[str]] = {}
    for record, key in zip(replay, keys, strict=True):
        lines = firsts.setdefault(key, [])
        if len(lines) < per_session:
            lines.append(record["text"])
    blocks = [(k, v) for k, v in firsts.items() if len(v) == per_session]
    now = int(time.time() * 1000)
    out: list[tuple[bytes, bytes, int]] = []
    for n in range(sessions):
        old, lines = blocks[n % len(blocks)]
        new = f"blk_{SYNTHETIC_BLOCK + n}"
        for text in lines:
            out.append(
                (new.encode(), json.dumps({"text": text.replace(old, new), "time": now}).encode(), now)
            )
    return out


def rss_run(run: Any, bundle: Path, topic: str, events: int, sessions: int, enabled: bool) -> dict[str, Any]:
    """The agent on the synthetic stream: VmHWM / VmRSS of its process sampled every 0.25 s from
    start to the end of the stream, then the open-sessions gauge (until it reads ``sessions`` or
    30 s pass) and a last sample."""
    import threading

    from chaos import _status_kib

    name = f"rss-{'on' if enabled else 'off'}"
    topics = run.topics(name, topic)
    load = _loadavg()
    agent = run.agent(
        topics,
        bundle,
        name,
        sessions__enabled="true" if enabled else "false",
        sessions__key_pattern=KEY_PATTERN,
        sessions__max_open=str(max(sessions, 100_000)),
    )
    peak = {"VmHWM": 0, "VmRSS": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for field in peak:
                value = _status_kib(agent.proc.pid, field)
                if value is not None:
                    peak[field] = max(peak[field], value)
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        agent.wait_ready()
        ready_rss = _status_kib(agent.proc.pid, "VmRSS")
        started = time.monotonic()
        _wait(
            lambda: _caught_up(run.broker.bootstrap, topics.group, topic), f"{name} to commit", interval=0.25
        )
        seconds = time.monotonic() - started
        gauge = 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            gauge = agent.metric("anomaly_agent_sessions_open")
            if gauge >= sessions or not enabled:
                break
            time.sleep(0.5)
        metrics = agent.metrics()
        time.sleep(0.5)
        end_rss = _status_kib(agent.proc.pid, "VmRSS")
        hwm = _status_kib(agent.proc.pid, "VmHWM")
    finally:
        stop.set()
        sampler.join(timeout=5)
    code = agent.terminate(timeout=120)
    closed = {k: v for k, v in metrics.items() if k.startswith("anomaly_agent_sessions_closed_total") and v}
    return {
        "sessions": "on" if enabled else "off",
        "events": events,
        "seconds_to_commit_all": round(seconds, 1),
        "sessions_open_gauge": gauge,
        "sessions_closed": closed,
        "rss_mib_at_ready": None if ready_rss is None else round(ready_rss / 1024, 1),
        "rss_mib_at_end": None if end_rss is None else round(end_rss / 1024, 1),
        "peak_rss_mib": round(max(peak["VmHWM"], hwm or 0) / 1024, 1),
        "peak_sampled_vmrss_mib": round(peak["VmRSS"] / 1024, 1),
        "exit_code": code,
        "load_before_after": [load, _loadavg()],
    }


def rss_runs(
    run: Any,
    bundle: Path,
    replay: Sequence[dict[str, Any]],
    keys: Sequence[str],
    args: argparse.Namespace,
    stamp: str,
) -> dict[str, Any]:
    """The synthetic open sessions produced once, read by the agent with sessions on, then off."""
    from replay import PARTITIONS

    synthetic = synthetic_sessions(replay, keys, args.rss_sessions, args.rss_lines_per_session)
    topic = _create_topic(run.broker.bootstrap, f"sessions-rss-{stamp}", PARTITIONS)
    _progress("producing the synthetic sessions", records=len(synthetic))
    _produce_keyed(run.broker.bootstrap, topic, synthetic)
    rss: dict[str, Any] = {"open_sessions_wanted": args.rss_sessions, "events": len(synthetic)}
    for enabled in (True, False):
        result = rss_run(run, bundle, topic, len(synthetic), args.rss_sessions, enabled)
        rss["sessions_on" if enabled else "sessions_off"] = result
        _progress("rss", **{k: result[k] for k in ("sessions", "peak_rss_mib", "sessions_open_gauge")})
    on = rss["sessions_on"]
    rss["target"] = "<= 600 MiB with 100,000 open sessions"
    rss["met"] = on["sessions_open_gauge"] >= 100_000 and on["peak_rss_mib"] <= 600
    rss["sessions_cost_mib"] = round(on["peak_rss_mib"] - rss["sessions_off"]["peak_rss_mib"], 1)
    return rss


@contextmanager
def _stage(report: dict[str, Any], name: str, out: Path | None) -> Iterator[None]:
    """A stage that fails is reported (its error) and the next one runs; the report so far is
    written to ``out`` after each stage."""
    try:
        yield
    except (Exception, SystemExit) as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
        _progress(f"{name} failed", error=report[name]["error"][:500])
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")


def broker_run(args: argparse.Namespace, test: set[str]) -> dict[str, Any]:
    """Issue 18, item 6: the agent through a real broker on the ``lines`` test stream (block id as
    the record key, the line's time, shifted to end three hours ago, as the record timestamp), with
    a bundle trained through the CLI on the other lines: its session alerts against the offline
    flags of ``score --sessions`` on the same bundle and stream, events/s with sessions on vs off,
    and the agent's peak RSS holding ``--rss-sessions`` open sessions (and with sessions off on the
    same input)."""
    _broker_imports()
    from agent_helpers import cli
    from replay import PARTITIONS, Run

    from training.export import cached_export

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agent.config import BatchSettings

    batch = BatchSettings()
    report: dict[str, Any] = {
        "bench": "sessions",
        "mode": "broker",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_at_start": _loadavg()},
    }
    with tempfile.TemporaryDirectory(prefix="sessions-broker-") as tmp:
        work = Path(tmp)
        replay, keys, training = _hdfs_replay(args.data, test)
        train_path = _write_jsonl(work / "train.jsonl", training)
        replay_path = _write_jsonl(work / "replay.jsonl", replay)
        report["data"] = {
            "replayed_lines": len(replay),
            "replayed_blocks": len(set(keys)),
            "training_lines": len(training),
            "partitions": PARTITIONS,
        }
        report["settings"] = {
            "session_key": KEY_PATTERN,
            "gap_seconds": args.gap_seconds,
            "max_seconds": MAX_SECONDS,
            "detector": "knn",
            "intra_op_threads": args.threads,
            "batch_max_size": batch.max_size,
            "batch_max_wait_ms": batch.max_wait_ms,
            "pairs": args.pairs,
            "rss_sessions": args.rss_sessions,
            "rss_lines_per_session": args.rss_lines_per_session,
        }
        _progress("training the bundle", lines=len(training))
        started = time.perf_counter()
        bundle = work / "bundle"
        trained = cli(
            "train",
            "--input",
            str(train_path),
            "--text-field",
            "text",
            "--detector",
            "knn",
            "--embedder",
            str(cached_export()),
            "--out",
            str(bundle),
            "--session-key-pattern",
            KEY_PATTERN,
            "--session-time-field",
            "time",
            "--session-gap-seconds",
            str(args.gap_seconds),
            "--session-max-seconds",
            str(MAX_SECONDS),
            "--session-labels",
            str(args.data / "anomaly_label.csv"),
            "--validation-fraction",  # the session model of the offline figures: every normal block
            "0",
            timeout=1800,
        )
        if trained.returncode != 0:
            raise SystemExit(f"sessions: train failed:\n{trained.stderr[-4000:]}")
        session_summary = json.loads(trained.stdout)["training"]["sessions"]
        report["train"] = {
            "seconds": round(time.perf_counter() - started, 1),
            "sessions": {
                k: session_summary.get(k)
                for k in ("sessions", "keys", "fit_sessions", "anomalous_keys", "close_reasons")
            }
            | {"threshold": session_summary.get("model", {}).get("threshold")},
        }
        _progress("offline score --sessions")
        scored = cli(
            "score", "--bundle", str(bundle), "--input", str(replay_path), "--sessions", timeout=1800
        )
        if scored.returncode != 0:
            raise SystemExit(f"sessions: score --sessions failed:\n{scored.stderr[-4000:]}")
        offline = [json.loads(line) for line in scored.stdout.splitlines() if line.strip()]
        labels = read_session_labels(args.data / "anomaly_label.csv")
        flagged_keys = {row["session"] for row in offline if row["is_anomaly"]}
        anomalous = {k for k in set(keys) if labels.get(k, False)}
        report["offline"] = {
            "sessions": len(offline),
            "flagged_sessions": sum(bool(row["is_anomaly"]) for row in offline),
            "flagged_blocks": len(flagged_keys),
            "anomalous_blocks": len(anomalous),
            "flagged_anomalous_blocks": len(flagged_keys & anomalous),
        }

        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        run = Run(
            work,
            argparse.Namespace(
                threads=args.threads, batch_size=batch.max_size, max_wait_ms=batch.max_wait_ms
            ),
        )
        if external:
            run.broker = _ExternalBroker(external)
        report["broker"] = "external ($KAFKA_BOOTSTRAP_SERVERS)" if external else "deploy/local/kafka.sh"
        run.broker.start()
        try:
            stamp = f"{os.getpid()}-{int(time.time())}"
            topic = _create_topic(run.broker.bootstrap, f"sessions-replay-{stamp}", PARTITIONS)
            _progress("producing the replay", records=len(replay))
            positions = _produce_keyed(
                run.broker.bootstrap,
                topic,
                [
                    (k.encode(), json.dumps(r).encode(), int(r["time"]))
                    for r, k in zip(replay, keys, strict=True)
                ],
            )
            if not args.skip_equality:
                _progress("equality run")
                with _stage(report, "equality", args.out):
                    report["equality"] = equality_run(run, bundle, topic, positions, offline)
                    _progress(
                        "equality",
                        equal=report["equality"]["equal"],
                        flagged=report["equality"]["offline_flagged"],
                        alerts=report["equality"]["agent_session_alerts"],
                    )
            if args.pairs > 0:
                with _stage(report, "throughput", args.out):
                    report["throughput"] = throughput_runs(run, bundle, topic, len(replay), args.pairs)
            if args.rss_sessions > 0:
                with _stage(report, "rss", args.out):
                    report["rss"] = rss_runs(run, bundle, replay, keys, args, stamp)
        finally:
            run.broker.stop()
    report["machine"]["load_at_end"] = _loadavg()
    return report


# --------------------------------------------------------------------- main


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst of the folds' session figures."""
    out: dict[str, Any] = {}
    for name in ("auroc", "average_precision", "precision", "recall", "f1", "decisive_share"):
        values = [r["sessions"][name] for r in results if r["sessions"][name] is not None]
        out[name] = {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4)}
    for anchor in ("pca_residual", "unseen_bigrams"):
        out[anchor] = {
            k: round(float(np.mean([r["anchors"][anchor][k] for r in results])), 4)
            for k in ("auroc", "average_precision", "best_f1")
        }
    return out


def evaluate_config(
    events: Sequence[SessionEvent],
    labels: dict[str, bool],
    tests: dict[str, list[set[str]]],
    windows: SessionWindows,
    order: int,
    target_fpr: float,
    seed: int,
    names: Sequence[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        results = [run_split(events, labels, test, windows, order, target_fpr, seed) for test in tests[name]]
        out[name] = results[0] if len(results) == 1 else {"per_fold": results, "summary": _summary(results)}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--mode", choices=("offline", "broker"), default="offline")
    parser.add_argument("--gap-seconds", type=float, default=3600.0)
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER)
    parser.add_argument("--target-fpr", type=float, default=DEFAULT_TARGET_FPR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true", help="also the gap x order x target FPR sensitivity")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--pairs", type=int, default=3, help="broker: sessions off/on pairs of the throughput"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="broker: the agent's onnxruntime intra-op threads"
    )
    parser.add_argument(
        "--rss-sessions",
        type=int,
        default=OPEN_SESSIONS,
        help="broker: open sessions of the RSS run (0: none)",
    )
    parser.add_argument("--rss-lines-per-session", type=int, default=3, help="broker: lines of each of them")
    parser.add_argument("--skip-equality", action="store_true", help="broker: no equality run")
    parser.add_argument("--rss-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=OPEN_SESSIONS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.sessions)))
        return 0
    started = time.perf_counter()
    events, labels = load(args.data)
    tests = splits(events, labels, args.seed)
    windows = SessionWindows(gap_seconds=args.gap_seconds, max_seconds=MAX_SECONDS)
    if args.mode == "broker":
        report = broker_run(args, tests["lines"][0])
        report["seconds"] = round(time.perf_counter() - started, 1)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out is not None:
            args.out.write_text(text + "\n")
        return 0
    report: dict[str, Any] = {
        "bench": "sessions",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "data": {
            "lines": len(events),
            "blocks": len(labels),
            "anomalous_blocks": sum(labels.values()),
            "source": str(args.data.relative_to(REPO.parent))
            if args.data.is_relative_to(REPO.parent)
            else str(args.data),
        },
        "settings": {
            "session_key": KEY_PATTERN,
            "windows": windows.to_dict(),
            "order": args.order,
            "target_fpr": args.target_fpr,
            "seed": args.seed,
        },
    }
    report |= evaluate_config(
        events, labels, tests, windows, args.order, args.target_fpr, args.seed, ("lines", "time", "folds")
    )
    train = [e for e in events if e.key not in tests["lines"][0]]
    model, _ = fit_sessions(
        train,
        windows=windows,
        labels=labels,
        order=args.order,
        target_fpr=args.target_fpr,
        validation_fraction=0.0,
    )
    report["cost"] = costs(model, events)
    report["memory"] = memory(model, events)
    if args.grid:
        grid = []
        for gap in (600.0, 3600.0):
            for order in (2, 3):
                for fpr in (0.001, 0.002, 0.005):
                    w = SessionWindows(gap_seconds=gap, max_seconds=MAX_SECONDS)
                    cell = evaluate_config(
                        events, labels, tests, w, order, fpr, args.seed, ("lines", "folds")
                    )
                    grid.append(
                        {
                            "gap_seconds": gap,
                            "order": order,
                            "target_fpr": fpr,
                            "lines": cell["lines"]["sessions"],
                            "folds": cell["folds"]["summary"],
                        }
                    )
        report["grid"] = grid
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
