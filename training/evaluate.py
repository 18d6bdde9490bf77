"""``anomaly-agent evaluate``: detection quality of a bundle on labelled data, optionally with a report.

Records whose label is in ``--normal-labels`` are the negatives, every other label is an anomaly.
Prints one JSON object: threshold-free ranking quality (``auroc``, ``average_precision``) and the
quality of the bundle's actual decision (score > 1.0): ``precision``, ``recall``, ``f1``,
``false_positive_rate`` and the confusion counts, plus a per-label breakdown (how many of each
label were flagged) so a person sees *which* anomalies are missed. With ``--report DIR`` it also
writes ``report.json``, plots and ``index.html`` there (training/report.py). A record's score is
the one the agent gives it (``agent.model.patterns.event_score``: with the bundle's value view,
its pattern's score fused with its own values' evidence), as ``score`` writes it.

``--sessions --session-labels CSV`` measures the bundle's session model instead: the input's
records are cut into sessions and scored exactly as the agent's tracker decides
(``training.sessions.score_sessions``), and each labelled key (a key is flagged when any of its
sessions is) gives AUROC, AP, precision / recall / F1 at the calibrated threshold and the
decisive share (``training.sessions.evaluate_sessions``).

Runtime-only imports at module level; matplotlib is imported only when a report is asked for.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.bundle import Bundle
from agent.model.detectors.base import Scores
from agent.model.embedder import EmbedderError
from agent.model.patterns import event_score
from training.records import (
    InputError,
    labels_of,
    parse_normal_labels,
    read_records,
    text_prep_for_input,
)
from training.score import (
    embed_texts,
    fail,
    load_bundle_or_fail,
    prepare_for,
    score_texts,
    session_model_or_fail,
    session_rows,
)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def detection_metrics(scores: npt.ArrayLike, anomalous: npt.ArrayLike) -> dict[str, Any]:
    """Quality of ``scores`` (> 1.0 = flagged) against ground truth ``anomalous`` (bool per record).

    Ratios with a zero denominator, and AUROC/AP when only one class is present, are None (JSON
    null) rather than a made-up 0 or 1.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(anomalous, dtype=bool)
    flagged = s > 1.0
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    tn = int(np.sum(~flagged & ~y))
    both = 0 < int(y.sum()) < len(y)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    if precision is None or recall is None:
        f1: float | None = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "average_precision": float(average_precision_score(y, s)) if both else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": _ratio(fp, fp + tn),
        "counts": {
            "n": len(y),
            "normal": int((~y).sum()),
            "anomalous": int(y.sum()),
            "flagged": int(flagged.sum()),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        },
    }


def per_label(
    labels: Sequence[str], scores: npt.ArrayLike, normal: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """For each label: records, flagged, flagged share, whether it counts as normal."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    out: dict[str, dict[str, Any]] = {}
    for label, n in sorted(Counter(labels).items(), key=lambda kv: (-kv[1], kv[0])):
        flagged = int(np.sum(s[lab == label] > 1.0))
        out[label] = {"normal": label in normal, "n": n, "flagged": flagged, "flagged_share": flagged / n}
    return out


def _evaluate_sessions(args: argparse.Namespace, bundle: Bundle) -> dict[str, Any]:
    """``evaluate --sessions``: the session figures of the bundle's session model on the input."""
    from training.sessions import evaluate_sessions, read_session_labels

    if args.session_labels is None:
        raise InputError("--sessions needs --session-labels (a key,label CSV: BlockId,Label)")
    model = session_model_or_fail(bundle)
    labels = read_session_labels(args.session_labels)
    records = read_records(args.input, label_field=args.label_field)
    scored = session_rows(args, bundle, records)
    return {
        "bundle": str(args.bundle),
        "model_id": bundle.model_id,
        "sha256": bundle.sha256,
        "unit": "session",
        "input": str(args.input),
        "session_labels": str(args.session_labels),
        "session_model": {"threshold": model.threshold, "target_fpr": model.target_fpr},
        **evaluate_sessions(scored, labels),
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    if getattr(args, "sessions", False):
        try:
            print(json.dumps(_evaluate_sessions(args, load_bundle_or_fail(args.bundle)), indent=2))
        except InputError as exc:
            return fail(str(exc))
        return 0
    try:
        if args.label_field is None or args.normal_labels is None:
            raise InputError(
                "evaluate needs --label-field and --normal-labels (or --sessions --session-labels CSV)"
            )
        bundle = load_bundle_or_fail(args.bundle)
        records = read_records(args.input, label_field=args.label_field)
        text_prep = text_prep_for_input(args.input, args.text_field, bundle.text_prep)
        texts, values = prepare_for(bundle, records, text_prep, args.input)
        labels = labels_of(records, args.label_field, args.input)
        normal = parse_normal_labels(args.normal_labels, labels, args.label_field)
        embedder = bundle.load_embedder()
    except (InputError, EmbedderError) as exc:
        return fail(str(exc))
    results = score_texts(bundle, embedder, texts, desc="evaluating")
    scores = Scores(
        score=np.array(
            [event_score(r, None if values is None else values[i])[0] for i, r in enumerate(results)],
            dtype=np.float64,
        ),
        cluster=np.array([r.cluster for r in results], dtype=np.int64),
        distance=np.array([r.distance for r in results], dtype=np.float64),
    )
    anomalous = np.array([label not in normal for label in labels], dtype=bool)
    result: dict[str, Any] = {
        "bundle": str(args.bundle),
        "model_id": bundle.model_id,
        "sha256": bundle.sha256,
        "detector": bundle.detector_name,
        "input": str(args.input),
        "label_field": args.label_field,
        "normal_labels": normal,
        **detection_metrics(scores.score, anomalous),
        "per_label": per_label(labels, scores.score, normal),
    }
    if args.report is not None:
        from training.report import write_report

        vectors = embed_texts(embedder, texts, desc="report")  # the plots project the vectors
        result["report"] = str(write_report(args.report, bundle, vectors, scores, anomalous, result))
    print(json.dumps(result, indent=2))
    return 0
