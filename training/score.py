"""``anomaly-agent score``: score a file of records with a bundle, JSONL to stdout in input order.

Runtime-only imports (bundle, embedder, detectors; no torch), so scoring works where only the
agent is installed. Scoring goes through exactly what the agent does per event: the bundle's
text preparation, its own embedder copy, its detector, and the agent's pattern table (each
distinct prepared text scored once; ``--no-patterns`` scores every record on its own). Each
output line is one input record::

    {"line": 12, "score": 0.42, "is_anomaly": false, "pattern_score": 0.42, "cluster": 3,
     "cluster_label": "joy", "distance": 0.21, "threshold": 0.5, "value": null,
     "text": "<prepared text the model saw>"}

``score`` is the event's score (> 1.0 = anomalous), computed by the agent's own per-event call
(``agent.model.patterns.event_score``): with a value view in the bundle, the pattern's score fused
with the evidence of the record's own values (what masking replaced), and ``value`` the unusual
value of an anomalous record (``{"slot", "placeholder", "value", "expected"}``, else null);
without one, the pattern's score. ``pattern_score`` is the detector's, distance / threshold,
``threshold`` the calibrated raw threshold of the record's cluster (null where it cannot be
recovered: a distance of exactly 0). With
``--label-field`` each line also carries the record's ``label`` (for plain text the label column
is removed from the text first, as in ``train``/``evaluate``, so the model sees the same text).
Errors (missing file, bad bundle, a record without text) print one line on stderr and exit 2
before anything is written to stdout.

``--sessions`` writes one line per **session** instead (docs/sessions.md), in order of closing,
exactly as the agent's tracker decides them (``training.sessions.score_sessions``; every session
still open at the end of the input closes there)::

    {"session": "blk_1", "score": 1.7, "is_anomaly": true, "events": 13, "first_line": 4,
     "last_line": 912, "reason": "gap", "decisive": false, "alerted_line": null,
     "signature": "…", "unexpected": [{"kind": "end", …}]}

The session key is read as training read it (the bundle's session model records it) unless
``--session-key-pattern``/``--session-key-field``/``--session-time-field`` say otherwise. Sessions
need no embedder: the patterns are hashes of the prepared texts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.model.bundle import Bundle, BundleError, load_bundle
from agent.model.detectors.base import Detector, FloatArray
from agent.model.embedder import Embedder, EmbedderError
from agent.model.patterns import PatternScore, PatternTable, event_score, score_patterns
from agent.model.sessions import SessionModel
from agent.model.textprep import SlotValues, TextPreparation
from training.records import (
    InputError,
    Record,
    labels_of,
    prepared_texts,
    prepared_values,
    read_records,
    text_prep_for_input,
)

EXIT_USAGE = 2
EMBED_CHUNK = 256
# Records per pattern-table call: lookups are cheap, this only paces the progress bar.
PATTERN_CHUNK = 8192


def fail(message: str) -> int:
    """Print a one-line error for the CLI and return the exit code for bad input/usage (2)."""
    print(f"anomaly-agent: {message}", file=sys.stderr)
    return EXIT_USAGE


def embed_texts(embedder: Embedder, texts: Sequence[str], *, desc: str = "embedding") -> FloatArray:
    """Embed ``texts`` (n, dim) in input order, each distinct text once, with a progress bar on stderr.

    Masked log lines repeat a lot (BGL: 2,000 lines, a few hundred distinct texts), so embedding
    only the distinct ones saves most of the work without changing any vector.
    """
    unique = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(unique)}
    parts: list[FloatArray] = []
    with tqdm(total=len(unique), desc=desc, unit="text", file=sys.stderr, mininterval=0.5) as bar:
        for start in range(0, len(unique), EMBED_CHUNK):
            chunk = unique[start : start + EMBED_CHUNK]
            parts.append(embedder.embed(chunk))
            bar.update(len(chunk))
    vectors = np.concatenate(parts) if parts else np.empty((0, embedder.dim), dtype=np.float32)
    ordered: FloatArray = vectors[np.fromiter((position[t] for t in texts), dtype=np.int64, count=len(texts))]
    return ordered


def score_texts(
    bundle: Bundle, embedder: Embedder, texts: Sequence[str], *, patterns: bool = True, desc: str = "scoring"
) -> list[PatternScore]:
    """The scores of prepared ``texts``, in order, exactly as the agent computes them.

    ``patterns`` (the default): through a pattern table (``agent.model.patterns``), so each distinct
    text is embedded and scored once — a million log lines with a few hundred patterns take
    seconds. Without: every text embedded and scored on its own row (the reference the table is
    checked against; slow). With a value view in the bundle each result carries its pattern bound
    to it (``PatternScore.values``); an event's score is ``event_score(result, its values)``.
    """
    view = bundle.values
    table = PatternTable(bundle.sha256, max_entries=max(1, len(set(texts)))) if patterns else None
    out: list[PatternScore] = []
    chunk = PATTERN_CHUNK if patterns else EMBED_CHUNK
    with tqdm(total=len(texts), desc=desc, unit="record", file=sys.stderr, mininterval=0.5) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            if table is not None:
                scored = score_patterns(
                    part, embedder=embedder, detector=bundle.detector, table=table, values=view
                )
                out += [s for s in scored if s is not None]
            else:
                scores = bundle.detector.score(embedder.embed(part), part)
                rows = zip(
                    scores.score.tolist(), scores.distance.tolist(), scores.cluster.tolist(), strict=True
                )
                out += [
                    PatternScore(
                        float(sc),
                        float(d),
                        int(c),
                        values=None if view is None else view.bind(text, float(sc)),
                    )
                    for text, (sc, d, c) in zip(part, rows, strict=True)
                ]
            bar.update(len(part))
    return out


def score_rows(
    detector: Detector,
    scores: Sequence[PatternScore],
    lines: Sequence[int],
    texts: Sequence[str],
    values: Sequence[SlotValues] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per record (see module docstring); ``values``: each record's slot values
    (``prepared_values``), scored against its pattern's slots where the bundle has a value view."""
    names = detector.cluster_labels
    rows: list[dict[str, Any]] = []
    for i, (line, text, result) in enumerate(zip(lines, texts, scores, strict=True)):
        score, finding = event_score(result, None if values is None else values[i])
        pattern_score, distance, cluster = result.score, result.distance, result.cluster
        threshold = distance / pattern_score if pattern_score > 0 and math.isfinite(pattern_score) else None
        rows.append(
            {
                "line": line,
                "score": score,
                "is_anomaly": bool(score > 1.0),
                "pattern_score": pattern_score,
                "cluster": cluster,
                "cluster_label": names[cluster] if names is not None and 0 <= cluster < len(names) else None,
                "distance": distance,
                "threshold": threshold,
                "value": None if finding is None else finding.to_dict(),
                "text": text,
            }
        )
    return rows


def prepare_for(
    bundle: Bundle, records: Sequence[Record], text_prep: TextPreparation, path: Path
) -> tuple[list[str], list[SlotValues] | None]:
    """The records' prepared texts and, where the bundle has a value view, their slot values (what
    the agent extracts per event: ``prepare_values``); without one, ``prepare`` alone."""
    if bundle.values is None:
        return prepared_texts(records, text_prep, path), None
    return prepared_values(records, text_prep, path)


def session_model_or_fail(bundle: Bundle) -> SessionModel:
    """The bundle's session model; InputError naming the fix when it has none."""
    if bundle.sessions is None:
        raise InputError(
            f"bundle {bundle.path} has no session model: train it with --session-key-pattern or"
            " --session-key-field"
        )
    return bundle.sessions


def session_rows(args: argparse.Namespace, bundle: Bundle, records: Sequence[Record]) -> list[dict[str, Any]]:
    """``score --sessions``: one dict per session of ``records``, as the agent's tracker decides."""
    from training.sessions import key_for, score_sessions, session_events

    model = session_model_or_fail(bundle)
    if args.session_max_open < 1:
        raise InputError(f"--session-max-open must be at least 1, got {args.session_max_open}")
    key = key_for(
        model,
        key_pattern=args.session_key_pattern,
        key_field=args.session_key_field,
        time_field=args.session_time_field,
    )
    text_prep = text_prep_for_input(args.input, args.text_field, bundle.text_prep)
    events = session_events(
        records,
        text_prep,
        args.input,
        key_pattern=key.pattern,
        key_field=key.field,
        time_field=key.time_field,
    )
    return score_sessions(model, events, max_open=args.session_max_open)


def load_bundle_or_fail(path: Path) -> Bundle:
    """load_bundle, turning its errors into InputError so every command reports them the same way."""
    try:
        return load_bundle(path)
    except BundleError as exc:
        raise InputError(str(exc)) from None


def cmd_score(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle_or_fail(args.bundle)
        label_field = getattr(args, "label_field", None)
        records = read_records(args.input, label_field=label_field)
        if getattr(args, "sessions", False):
            sessions = session_rows(args, bundle, records)
            sys.stdout.writelines(json.dumps(row) + "\n" for row in sessions)
            sys.stdout.flush()
            return 0
        text_prep = text_prep_for_input(args.input, args.text_field, bundle.text_prep)
        texts, values = prepare_for(bundle, records, text_prep, args.input)
        labels = labels_of(records, label_field, args.input) if label_field else None
        embedder = bundle.load_embedder()
    except (InputError, EmbedderError) as exc:
        return fail(str(exc))
    scores = score_texts(bundle, embedder, texts, patterns=getattr(args, "patterns", True))
    out = sys.stdout
    lines = [r.line for r in records]
    for i, row in enumerate(score_rows(bundle.detector, scores, lines, texts, values)):
        if labels is not None:
            row["label"] = labels[i]
        out.write(json.dumps(row) + "\n")
    out.flush()
    return 0
