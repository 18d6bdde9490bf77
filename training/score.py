"""``anomaly-agent score``: score a file of records with a bundle, JSONL to stdout in input order.

Runtime-only imports (bundle, embedder, detectors; no torch), so scoring works where only the
agent is installed. Scoring goes through exactly what the agent does per event: the bundle's
text preparation, its own embedder copy, its detector, and the agent's pattern table (each
distinct prepared text scored once; ``--no-patterns`` scores every record on its own). Each
output line is one input record::

    {"line": 12, "score": 0.42, "is_anomaly": false, "cluster": 3, "cluster_label": "joy",
     "distance": 0.21, "threshold": 0.5, "text": "<prepared text the model saw>"}

``score`` is distance / threshold (> 1.0 = anomalous), ``threshold`` the calibrated raw threshold
of the record's cluster (null where it cannot be recovered: a distance of exactly 0). With
``--label-field`` each line also carries the record's ``label`` (for plain text the label column
is removed from the text first, as in ``train``/``evaluate``, so the model sees the same text).
Errors (missing file, bad bundle, a record without text) print one line on stderr and exit 2
before anything is written to stdout.
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
from agent.model.patterns import PatternScore, PatternTable, score_patterns
from training.records import InputError, labels_of, prepared_texts, read_records, text_prep_for_input

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
    checked against; slow).
    """
    table = PatternTable(bundle.sha256, max_entries=max(1, len(set(texts)))) if patterns else None
    out: list[PatternScore] = []
    chunk = PATTERN_CHUNK if patterns else EMBED_CHUNK
    with tqdm(total=len(texts), desc=desc, unit="record", file=sys.stderr, mininterval=0.5) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            if table is not None:
                scored = score_patterns(part, embedder=embedder, detector=bundle.detector, table=table)
                out += [s for s in scored if s is not None]
            else:
                scores = bundle.detector.score(embedder.embed(part), part)
                rows = zip(
                    scores.score.tolist(), scores.distance.tolist(), scores.cluster.tolist(), strict=True
                )
                out += [PatternScore(float(sc), float(d), int(c)) for sc, d, c in rows]
            bar.update(len(part))
    return out


def score_rows(
    detector: Detector, scores: Sequence[PatternScore], lines: Sequence[int], texts: Sequence[str]
) -> list[dict[str, Any]]:
    """One JSON-ready dict per record (see module docstring)."""
    names = detector.cluster_labels
    rows: list[dict[str, Any]] = []
    for line, text, result in zip(lines, texts, scores, strict=True):
        score, distance, cluster = result.score, result.distance, result.cluster
        threshold = distance / score if score > 0 and math.isfinite(score) else None
        rows.append(
            {
                "line": line,
                "score": score,
                "is_anomaly": bool(score > 1.0),
                "cluster": cluster,
                "cluster_label": names[cluster] if names is not None and 0 <= cluster < len(names) else None,
                "distance": distance,
                "threshold": threshold,
                "text": text,
            }
        )
    return rows


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
        text_prep = text_prep_for_input(args.input, args.text_field, bundle.text_prep)
        texts = prepared_texts(records, text_prep, args.input)
        labels = labels_of(records, label_field, args.input) if label_field else None
        embedder = bundle.load_embedder()
    except (InputError, EmbedderError) as exc:
        return fail(str(exc))
    scores = score_texts(bundle, embedder, texts, patterns=getattr(args, "patterns", True))
    out = sys.stdout
    for i, row in enumerate(score_rows(bundle.detector, scores, [r.line for r in records], texts)):
        if labels is not None:
            row["label"] = labels[i]
        out.write(json.dumps(row) + "\n")
    out.flush()
    return 0
