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

``--mode broker`` is the boundary for the run through a real broker and the agent (its session
alerts equal to the offline flags, events/s with sessions on vs off, peak RSS): not in this phase.
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
from collections.abc import Sequence
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


# --------------------------------------------------------------------- the broker boundary


def broker_run(events: Sequence[SessionEvent], offline: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Phase 2 of issue 18: replay ``events`` (the ``lines`` test stream, block id as the record key,
    the line's time as the record timestamp) through a real broker into ``anomaly-agent run`` with a
    bundle holding the session model; return whether its session alerts equal ``offline`` (the rows
    of ``score_sessions`` with ``is_anomaly``), events/s with ``[sessions] enabled`` on vs off, and
    the peak RSS with the open sessions. Needs the pipeline integration, which is not there yet."""
    raise NotImplementedError("--mode broker needs the session pipeline integration (issue 18, phase 2)")


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
        test = tests["lines"][0]
        model, _ = fit_sessions([e for e in events if e.key not in test], windows=windows, labels=labels)
        offline = [r for r in score_sessions(model, events) if r["session"] in test and r["is_anomaly"]]
        try:
            print(json.dumps(broker_run([e for e in events if e.key in test], offline), indent=2))
        except NotImplementedError as exc:
            print(json.dumps({"bench": "sessions", "mode": "broker", "error": str(exc)}))
            return 2
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
