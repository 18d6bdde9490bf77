"""Sessions offline: fit the session model, score sessions as the agent decides, evaluate them.

The functions ``train --session-key-pattern/--session-key-field``, ``score --sessions`` and
``evaluate --sessions --session-labels`` are thin wrappers of:

``session_events(records, text_prep, path, key_pattern=/key_field=, time_field=)``
    each record as a ``SessionEvent``: its line, session key (``agent.alerts.sessions.session_key``
    on the **raw** text or the fields), pattern hash of its prepared text and timestamp;
``read_session_labels(path)``
    a ``key,label`` CSV (loghub's ``BlockId,Label`` with ``Normal``/``Anomaly``) → key → anomalous;
``fit_sessions(events, windows=..., labels=...)``
    a ``SessionModel`` fitted on the normal sessions, and a JSON summary with validation figures;
``score_sessions(model, events)``
    one JSON-able dict per session, exactly what the agent decides: the events go through
    ``SessionTracker`` — the agent's own windows, caps, eviction and scoring — with record lines as
    offsets, and at the end of the input every open session closes (``end_of_input``);
``evaluate_sessions(scored, labels)``
    AUROC, AP, precision/recall/F1 at the calibrated threshold (score > 1.0) per labelled key,
    and the share of detected anomalous keys that a decisive step flagged before the close.

Sessions are cut for training by the same tracker (with a blank model), so a model is always fitted
on sessions cut exactly as the agent will cut them. Event time offline is a record's
``time_field`` (epoch milliseconds, or an ISO-8601 string); a record without one does not move the
time (it gets the latest time seen, 0 before any), so input without times is cut by the caps and
the end of the input only.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.alerts.sessions import (
    DEFAULT_MAX_OPEN,
    SessionTracker,
    SessionVerdict,
    compile_key_pattern,
    session_key,
)
from agent.decode import lookup_field
from agent.model.examples import pattern_hash
from agent.model.sessions import (
    DEFAULT_FOLDS,
    DEFAULT_ORDER,
    DEFAULT_TARGET_FPR,
    SessionKey,
    SessionModel,
    SessionSequence,
    SessionWindows,
)
from agent.model.textprep import MissingTextError, TextPreparation
from training.evaluate import detection_metrics
from training.records import InputError, Record

__all__ = [
    "ANOMALY_LABELS",
    "NORMAL_LABELS",
    "SessionEvent",
    "cut_sessions",
    "evaluate_sessions",
    "fit_sessions",
    "key_for",
    "read_session_labels",
    "score_sessions",
    "session_events",
]

#: label values (case-insensitive) of ``read_session_labels``.
ANOMALY_LABELS = frozenset({"anomaly", "anomalous", "abnormal", "1", "true"})
NORMAL_LABELS = frozenset({"normal", "0", "false"})
DEFAULT_VALIDATION_FRACTION = 0.2
_BATCH = 1024


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One record as the session tracker sees it: ``line`` (its offset offline), session ``key``
    (None: no session), ``pattern`` (hash of ``prepared``) and ``timestamp_ms`` (None: none)."""

    line: int
    key: str | None
    pattern: int
    prepared: str
    timestamp_ms: int | None


def session_events(
    records: Iterable[Record],
    text_prep: TextPreparation,
    path: Path,
    *,
    key_pattern: str | None = None,
    key_field: str | None = None,
    time_field: str | None = None,
) -> list[SessionEvent]:
    """The records as session events; exactly one of ``key_pattern`` (regex with one group, on the
    raw text) and ``key_field`` (dotted field). InputError naming the line for a record without
    usable text or with an unreadable ``time_field``, or for a bad key pattern."""
    if (key_pattern is None) == (key_field is None):
        raise InputError("give exactly one of --session-key-pattern and --session-key-field")
    try:
        compiled = None if key_pattern is None else compile_key_pattern(key_pattern)
    except ValueError as exc:
        raise InputError(f"--session-key-pattern: {exc}") from None
    out: list[SessionEvent] = []
    for record in records:
        try:
            raw = text_prep.extract(record.data)
        except MissingTextError as exc:
            raise InputError(f"{path} line {record.line}: {exc}") from None
        prepared = text_prep.prepare(raw)
        key = session_key(raw, record.data, pattern=compiled, field=key_field)
        when = None if time_field is None else _timestamp(record, time_field, path)
        out.append(SessionEvent(record.line, key, pattern_hash(prepared), prepared, when))
    return out


def key_for(
    model: SessionModel, *, key_pattern: str | None, key_field: str | None, time_field: str | None
) -> SessionKey:
    """The key ``score --sessions`` and ``evaluate --sessions`` read sessions by: the flags' where
    given, else the one training stored with the model (``SessionModel.key``); ``time_field``
    overrides the stored time field. InputError when neither names a key."""
    stored = model.key
    if key_pattern is not None or key_field is not None:
        when = time_field if time_field is not None else (None if stored is None else stored.time_field)
        try:
            return SessionKey(pattern=key_pattern, field=key_field, time_field=when)
        except ValueError as exc:
            raise InputError(f"session key: {exc}") from None
    if stored is None:
        raise InputError(
            "the bundle's session model records no session key:"
            " give --session-key-pattern or --session-key-field"
        )
    return stored if time_field is None else replace(stored, time_field=time_field)


def _timestamp(record: Record, name: str, path: Path) -> int | None:
    found, value = lookup_field(record.data, name)
    if not found or value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
            return round(moment.timestamp() * 1000)
    raise InputError(
        f"{path} line {record.line}: time field {name!r} is {value!r}, not epoch milliseconds or ISO-8601"
    )


def read_session_labels(path: Path) -> dict[str, bool]:
    """``key,label`` rows after a header (first column the key, second the label; loghub's
    ``BlockId,Label``) → key → anomalous. InputError for an unknown label or a repeated key."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise InputError(f"session labels {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"session labels {path}: not a UTF-8 CSV ({exc})") from None
    labels: dict[str, bool] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise InputError(f"session labels {path} line {number}: expected key,label")
        key, label = row[0].strip(), row[1].strip().lower()
        if label not in ANOMALY_LABELS | NORMAL_LABELS:
            raise InputError(
                f"session labels {path} line {number}: label {row[1]!r} is neither normal"
                f" ({', '.join(sorted(NORMAL_LABELS))}) nor anomalous ({', '.join(sorted(ANOMALY_LABELS))})"
            )
        if key in labels:
            raise InputError(f"session labels {path} line {number}: key {key!r} appears twice")
        labels[key] = label in ANOMALY_LABELS
    if not labels:
        raise InputError(f"session labels {path} hold no rows")
    return labels


# --------------------------------------------------------------------- cutting, fitting, scoring


@dataclass(frozen=True, slots=True)
class CutSession:
    """A session as the agent cuts it: its key, lines, pattern hashes and why it closed."""

    key: str
    first_line: int
    last_line: int
    sequence: SessionSequence


def cut_sessions(
    events: Iterable[SessionEvent], windows: SessionWindows, *, max_open: int = DEFAULT_MAX_OPEN
) -> list[CutSession]:
    """The sessions of ``events`` in order of closing, cut by the agent's ``SessionTracker`` (a blank
    model: windows, caps, eviction and late events exactly as the agent handles them)."""
    tracker = SessionTracker(SessionModel.blank(windows), "offline", 0, max_open=max_open, max_runs=1)
    open_patterns: dict[str, list[int]] = {}
    out: list[CutSession] = []

    def closed(verdicts: list[SessionVerdict]) -> None:
        for verdict in verdicts:
            if verdict.kind == "close":
                patterns = open_patterns.pop(verdict.session)
                sequence = SessionSequence(tuple(patterns), verdict.result.reason)
                out.append(CutSession(verdict.session, verdict.first_offset, verdict.last_offset, sequence))

    now = 0
    for event in events:
        now = now if event.timestamp_ms is None else max(now, event.timestamp_ms)
        when = now if event.timestamp_ms is None else event.timestamp_ms
        closed(tracker.advance(when))
        if event.key is None:
            continue
        late = tracker.late
        verdicts = tracker.event(event.key, event.pattern, timestamp_ms=when, offset=event.line)
        if tracker.late == late:
            open_patterns.setdefault(event.key, []).append(event.pattern)
        closed(verdicts)
        tracker.commit()
    closed(tracker.close_all())
    return out


def fit_sessions(
    events: Sequence[SessionEvent],
    *,
    windows: SessionWindows,
    labels: Mapping[str, bool] | None = None,
    order: int = DEFAULT_ORDER,
    target_fpr: float = DEFAULT_TARGET_FPR,
    folds: int = DEFAULT_FOLDS,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    max_open: int = DEFAULT_MAX_OPEN,
    key: SessionKey | None = None,
    templates: bool = True,
) -> tuple[SessionModel, dict[str, Any]]:
    """Fit the session model on the normal sessions of ``events``; returns it and a JSON summary.

    Sessions whose key ``labels`` marks anomalous are left out of fitting (keys without a label
    count as normal). ``validation_fraction`` of the normal *keys* (seeded; all sessions of a key on
    the same side) is kept away from fitting: the summary's ``validation`` gives their false-positive
    rate at score > 1.0 and, with anomalous keys, the figures of ``evaluate_sessions`` on those
    keys and the validation keys. ``key`` (where the keys came from) is stored with the model, and
    with ``templates`` the prepared text of each pattern (what session alerts show; not kept
    for ``train --no-examples``). InputError when fewer than 2 normal sessions are left to fit."""
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    sessions = cut_sessions(events, windows, max_open=max_open)
    anomalous = {s.key for s in sessions if labels is not None and labels.get(s.key, False)}
    normal_keys = sorted({s.key for s in sessions} - anomalous)
    order_of = np.random.default_rng(seed).permutation(len(normal_keys))
    held = {normal_keys[i] for i in order_of[: round(validation_fraction * len(normal_keys))].tolist()}
    fit = [s.sequence for s in sessions if s.key not in anomalous and s.key not in held]
    if len(fit) < 2:
        raise InputError(f"{len(fit)} normal sessions to fit; the session model needs at least 2")
    texts = {event.pattern: event.prepared for event in events} if templates else None
    try:
        model = SessionModel.fit(
            fit,
            windows=windows,
            order=order,
            target_fpr=target_fpr,
            folds=folds,
            seed=seed,
            templates=texts,
            key=key,
        )
    except ValueError as exc:
        raise InputError(f"session model: {exc}") from None
    reasons = Counter(s.sequence.reason for s in sessions)
    summary: dict[str, Any] = {
        "model": model.describe(),
        "sessions": len(sessions),
        "keys": len({s.key for s in sessions}),
        "close_reasons": dict(sorted(reasons.items())),
        "fit_sessions": len(fit),
        "anomalous_keys": len(anomalous),
        "validation_keys": len(held),
        "unlabelled_keys": None if labels is None else len({s.key for s in sessions} - set(labels)),
        "validation": None,
    }
    if held:
        wanted = held | anomalous
        scored = [row for row in score_sessions(model, events, max_open=max_open) if row["session"] in wanted]
        summary["validation"] = evaluate_sessions(scored, {key: key in anomalous for key in wanted})
    return model, summary


def score_sessions(
    model: SessionModel, events: Iterable[SessionEvent], *, max_open: int = DEFAULT_MAX_OPEN
) -> list[dict[str, Any]]:
    """One dict per session, in order of closing — what the agent decides on the same records:
    ``session`` (key), ``score``, ``is_anomaly``, ``events``, ``first_line``, ``last_line``,
    ``reason`` (why it closed), ``decisive`` (a step alerted before the close), ``alerted_line``
    (that step's line, else None), ``signature`` and ``unexpected`` (steps with positions,
    patterns, expected patterns, evidence and templates). Every session still open at the end
    of the input closes as ``end_of_input``."""
    tracker = SessionTracker(model, "offline", 0, max_open=max_open)
    alerted: dict[str, int] = {}
    out: list[dict[str, Any]] = []

    def collect(verdicts: list[SessionVerdict], line: int) -> None:
        for verdict in verdicts:
            if verdict.kind == "decisive":
                alerted[verdict.session] = line
                continue
            result = verdict.result
            out.append(
                {
                    "session": verdict.session,
                    "score": round(result.score, 6),
                    "is_anomaly": result.is_anomaly,
                    "events": result.events,
                    "first_line": verdict.first_offset,
                    "last_line": verdict.last_offset,
                    "reason": result.reason,
                    "decisive": result.decisive,
                    "alerted_line": alerted.pop(verdict.session, None),
                    "signature": result.signature,
                    "unexpected": [step.to_dict(verdict.templates) for step in result.unexpected],
                }
            )

    now = 0
    line = 0
    for event in events:
        line = event.line
        now = now if event.timestamp_ms is None else max(now, event.timestamp_ms)
        when = now if event.timestamp_ms is None else event.timestamp_ms
        text = event.prepared if event.key is not None else None
        collect(tracker.event(event.key, event.pattern, timestamp_ms=when, offset=line, text=text), line)
        if line % _BATCH == 0:
            tracker.commit()  # nothing is rolled back offline: this only bounds the undo log
    collect(tracker.close_all(), line)
    return out


def evaluate_sessions(scored: Sequence[Mapping[str, Any]], labels: Mapping[str, bool]) -> dict[str, Any]:
    """Figures per labelled key (the unit labels come in): its score is the highest of its
    sessions' (a key is flagged when any of its sessions is), so ``detection_metrics`` gives
    AUROC, AP and precision/recall/F1 at the calibrated threshold. ``decisive_share``: of the
    anomalous keys flagged, the share flagged by a decisive step (an alert before its session
    closed). Keys scored without a label are counted, not evaluated."""
    best: dict[str, float] = {}
    decisive: dict[str, bool] = {}
    for row in scored:
        key = str(row["session"])
        best[key] = max(best.get(key, 0.0), float(row["score"]))
        decisive[key] = decisive.get(key, False) or bool(row["decisive"])
    keys = sorted(k for k in best if k in labels)
    truth = np.array([labels[k] for k in keys], dtype=bool)
    scores = np.array([best[k] for k in keys], dtype=np.float64)
    metrics = detection_metrics(scores, truth)
    detected = [k for k in keys if labels[k] and best[k] > 1.0]
    metrics["decisive_share"] = sum(decisive[k] for k in detected) / len(detected) if detected else None
    metrics["sessions"] = len(scored)
    metrics["unlabelled_keys"] = len(best) - len(keys)
    return metrics
