"""``anomaly-agent train``: fit a detector on normal records and write a verified model bundle.

Steps: read the records (training/records.py), prepare their text exactly as the agent will
(``TextPreparation``, stored in the bundle), keep the normal ones (``--normal-labels``; without a
label field every record is normal), embed them, fit ``create_detector(--detector,
target_fpr=--target-fpr, seed=--seed)`` and write the bundle (agent/model/bundle.py).

Honest numbers: the detector calibrates its threshold on a held-out part of what it is given, so
that part cannot also tell how well the threshold generalizes. ``--validation-fraction`` (default
0.2, seeded, stratified by label) of the normal records is therefore kept away from the detector
entirely; its false-positive rate at score > 1.0 is recorded in the manifest as
``evaluation.validation_fpr`` next to the target. Records with non-normal labels, when the input
has them, are scored too and their recall/AUROC recorded — a first look, not a substitute for
``anomaly-agent evaluate`` on separate data.

The bundle keeps a seeded sample of up to ``TRAINING_SAMPLE_SIZE`` fitted vectors
(``training_sample.npy``) so ``evaluate --report`` can draw test data against the training data.

It also keeps the training patterns (agent/model/examples.py): the hashes of every distinct prepared
text of the normal records (``known_patterns.npy``, always) and, unless ``--no-examples``, up to
``--max-examples`` of those texts, most frequent first, with the vectors already computed here
(``examples.npy`` + ``examples.jsonl``), so alerts can say whether a pattern was seen in training
and show the nearest normal examples. ``training.patterns`` in the manifest counts them.

**The value view** (agent/model/values.py, on by default; ``--no-value-view`` leaves it out): where
masking replaced values (numbers, paths, URLs, ...), the values each placeholder slot of a
training pattern had are described beside the detector, from the detector's own fit part, and one
threshold is set on its held-out part (``fit_value_view``); stored in ``values/``. With it,
masking is always kept (``decide_mask(value_view=True)``: both views, nothing hidden goes
unseen); ``--no-mask`` prepares raw text, which has no placeholders and so no value view. The
validation FPR and the anomalies' figures are those of the events' fused scores, as the agent
computes them (``agent.model.patterns.event_score``), with the detector's alone beside them.

**Sessions** (``--session-key-pattern REGEX`` or ``--session-key-field FIELD``; docs/sessions.md):
the training input's records, in input order, are cut into sessions by the agent's own tracker
(``--session-gap-seconds``, ``--session-max-seconds``, ``--session-max-events``; event time from
``--session-time-field``), and the session model is fitted on the normal ones
(training/sessions.py): with ``--session-labels CSV`` the anomalous keys are left out and, with
``--validation-fraction`` of the normal keys, give the validation figures. Stored in
``sessions/``, with the key it was read by.

Prints one JSON summary to stdout; progress goes to stderr. The embedder default is
``training.export.cached_export()`` (exported once per machine), imported only here so that score
and evaluate never import torch.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.bundle import BundleError, write_bundle
from agent.model.detectors import create_detector
from agent.model.detectors._common import CalibratedDetector
from agent.model.detectors.base import Detector, FloatArray
from agent.model.detectors.calibration import holdout_split
from agent.model.embedder import EmbedderError, OnnxEmbedder
from agent.model.examples import MAX_KNOWN_PATTERNS, Examples, KnownPatterns, rank_patterns
from agent.model.patterns import PatternScore, event_score
from agent.model.sessions import SessionKey, SessionModel, SessionWindows
from agent.model.textprep import SlotValues, TextPreparation
from agent.model.values import ValueView, fit_value_view
from training.evaluate import detection_metrics
from training.feedback_fold import normal_templates
from training.masking import decide_mask
from training.rates import rate_seeds
from training.records import (
    InputError,
    Record,
    detect_format,
    extracted_texts,
    labels_of,
    parse_normal_labels,
    read_records,
    text_prep_for_input,
)
from training.score import embed_texts, fail
from training.sessions import fit_sessions, read_session_labels, session_events

TRAINING_SAMPLE_SIZE = 500
IntArray = npt.NDArray[np.int64]


def _embedder_dir(arg: Path | None) -> Path:
    if arg is not None:
        return Path(arg)
    from training.export import cached_export

    return cached_export()


def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (InputError, BundleError, EmbedderError) as exc:
        return fail(str(exc))


def _check_args(args: argparse.Namespace) -> None:
    if args.normal_labels is not None and args.label_field is None:
        raise InputError("--normal-labels needs --label-field (the field/column holding the labels)")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise InputError(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    if args.max_chars < 1:
        raise InputError(f"--max-chars must be at least 1, got {args.max_chars}")
    if args.max_examples < 1:
        raise InputError(
            f"--max-examples must be at least 1, got {args.max_examples} (to keep none: --no-examples)"
        )
    keyed = args.session_key_pattern is not None or args.session_key_field is not None
    if not keyed:
        given = [
            flag
            for flag, value in (
                ("--session-labels", args.session_labels),
                ("--session-time-field", args.session_time_field),
            )
            if value is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)} needs --session-key-pattern or --session-key-field")


def _create_detector(args: argparse.Namespace) -> Detector:
    try:
        detector = create_detector(
            args.detector,
            target_fpr=args.target_fpr,
            calibration_split=args.calibration_split,
            seed=args.seed,
        )
    except ValueError as exc:
        raise InputError(f"--detector {args.detector}: {exc}") from None
    if getattr(detector, "requires_labels", False) and args.label_field is None:
        raise InputError(
            f"--detector {args.detector} needs the normal class of every training record:"
            " give --label-field (and --normal-labels to pick the normal classes)"
        )
    return detector


def _train(args: argparse.Namespace) -> int:
    _check_args(args)
    detector = _create_detector(args)
    records = read_records(args.input, label_field=args.label_field)
    base_prep = text_prep_for_input(args.input, args.text_field, TextPreparation(max_chars=args.max_chars))
    extracted = extracted_texts(records, base_prep, args.input)
    labels = labels_of(records, args.label_field, args.input) if args.label_field else None
    folded = normal_templates(args.feedback_from) if args.feedback_from is not None else None
    normal_labels = (
        parse_normal_labels(args.normal_labels, labels, args.label_field)
        if labels is not None and args.normal_labels is not None
        else None
    )
    if labels is None or normal_labels is None:
        is_normal = np.ones(len(records), dtype=bool)
    else:
        is_normal = np.isin(np.asarray(labels), normal_labels)
    normal_idx = np.flatnonzero(is_normal)
    anomalous_idx = np.flatnonzero(~is_normal)
    if len(normal_idx) < 3:
        raise InputError(f"{args.input}: {len(normal_idx)} normal records; training needs at least 3")
    masking = decide_mask(
        [extracted[i] for i in normal_idx], base_prep, args.mask, value_view=args.value_view
    )
    text_prep = replace(base_prep, mask=masking.mask)
    texts, values = _prepare(text_prep, extracted)
    # Sessions need no vectors: fitted (and their flags checked) before the embedding.
    session_model, session_summary = _fit_session_model(args, records, text_prep)

    fit_idx, val_idx = _validation_split(args, normal_idx, labels)
    if folded is not None and folded.templates:
        # Patterns operators marked normal: fitted as normal records (not validated: they must not
        # move the threshold), labelled like the most common normal record where there are labels.
        added = np.arange(len(texts), len(texts) + len(folded.templates))
        more_texts, more_values = _prepare(text_prep, folded.templates)
        texts += more_texts
        values += more_values
        if labels is not None:
            labels += [Counter(np.asarray(labels)[normal_idx].tolist()).most_common(1)[0][0]] * len(added)
        fit_idx = np.concatenate([fit_idx, added])
        normal_idx = np.concatenate([normal_idx, added])

    embedder_dir = _embedder_dir(args.embedder)
    embedder = OnnxEmbedder(embedder_dir)
    used = np.concatenate([fit_idx, val_idx, anomalous_idx])
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    vectors[used] = embed_texts(embedder, [texts[i] for i in used])

    fit_labels = None if labels is None else np.asarray(labels)[fit_idx]
    try:
        detector.fit(vectors[fit_idx], fit_labels, [texts[i] for i in fit_idx])
    except ValueError as exc:
        raise InputError(f"--detector {args.detector}: {exc}") from None
    view, view_summary = _fit_value_view(
        args, masking.mask, detector, vectors, fit_labels, texts, values, fit_idx
    )

    evaluation = _evaluation(detector, view, vectors, texts, values, val_idx, anomalous_idx, args.target_fpr)
    rng = np.random.default_rng(args.seed)
    sample_idx = np.sort(rng.permutation(fit_idx)[:TRAINING_SAMPLE_SIZE])
    # The training patterns: distinct prepared texts of the normal records (fitted and validation),
    # most frequent first; their vectors are the rows already embedded above.
    patterns, first = rank_patterns([texts[i] for i in normal_idx])
    known = KnownPatterns.from_texts(patterns[:MAX_KNOWN_PATTERNS])
    examples = None
    if args.examples:
        kept = min(len(patterns), args.max_examples)
        examples = Examples.from_vectors(patterns[:kept], vectors[normal_idx[first[:kept]]])
    training = {
        "input": Path(args.input).name,
        "format": detect_format(Path(args.input)),
        "records": len(records),
        "distinct_texts": len(set(texts)),
        "masking": masking.to_dict(),
        "value_view": view_summary,
        "calibration_split": args.calibration_split,
        "label_field": args.label_field,
        "normal_labels": normal_labels,
        "label_counts": dict(Counter(labels).most_common()) if labels is not None else None,
        "normal_records": len(normal_idx),
        "fit_records": len(fit_idx),
        "validation_records": len(val_idx),
        "anomalous_records": len(anomalous_idx),
        "training_sample": len(sample_idx),
        "patterns": {
            "distinct": len(patterns),
            "known": len(known),
            "examples": 0 if examples is None else len(examples),
            "max_examples": args.max_examples if args.examples else None,
        },
        "seed": args.seed,
    }
    if session_summary is not None:
        evaluation["sessions"] = session_summary.pop("validation")
        training["sessions"] = session_summary
    if folded is not None:
        training["feedback"] = {
            "file": Path(args.feedback_from).name,
            "normal_patterns_folded": len(folded.templates),
            "normal_without_template": folded.normal_without_template,
            "invalid_lines": folded.invalid_lines,
        }
    seeds = None
    if args.time_field is not None:
        timed = [i for i in normal_idx.tolist() if i < len(records)]  # not the folded feedback
        seeds, training["rates"] = rate_seeds(records, texts, timed, args.time_field, args.input)
    config = getattr(detector, "config", None)
    params: dict[str, Any] = (
        config() if callable(config) else {"target_fpr": args.target_fpr, "seed": args.seed}
    )
    out = write_bundle(
        args.out,
        embedder_dir=embedder_dir,
        text_prep=text_prep,
        detector=detector,
        training_summary=training,
        evaluation=evaluation,
        detector_params=params,
        training_sample=vectors[sample_idx],
        known_patterns=known,
        examples=examples,
        normal_patterns=(
            KnownPatterns.from_texts(text_prep.prepare(t) for t in folded.templates)
            if folded is not None and folded.templates
            else None
        ),
        rate_seeds=seeds,
        sessions=session_model,
        values=view,
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    summary = {
        "bundle": str(out),
        "model_id": manifest["model_id"],
        "detector": {"name": detector.name, "params": params},
        "text_preparation": text_prep.to_dict(),
        "training": training,
        "evaluation": evaluation,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _prepare(text_prep: TextPreparation, raw: Sequence[str]) -> tuple[list[str], list[SlotValues]]:
    """The prepared texts (``prepare``'s, character for character) and what their placeholders
    replaced, as the agent prepares an event for the value view."""
    pairs = [text_prep.prepare_values(text) for text in raw]
    return [text for text, _ in pairs], [slots for _, slots in pairs]


def _validation_split(
    args: argparse.Namespace, normal_idx: IntArray, labels: list[str] | None
) -> tuple[IntArray, IntArray]:
    """(fit, validation) record indices: ``--validation-fraction`` of the normal records (seeded,
    stratified by label, in ``--calibration-split`` order) kept away from the detector."""
    if args.validation_fraction <= 0:
        return normal_idx, normal_idx[:0]
    strata = None if labels is None else np.asarray(labels)[normal_idx]
    fit_pos, val_pos = holdout_split(
        len(normal_idx),
        fraction=args.validation_fraction,
        seed=args.seed,
        strata=strata,
        order=args.calibration_split,
    )
    return normal_idx[fit_pos], normal_idx[val_pos]


def _fit_value_view(
    args: argparse.Namespace,
    masked: bool,
    detector: Detector,
    vectors: FloatArray,
    fit_labels: npt.NDArray[Any] | None,
    texts: list[str],
    values: list[SlotValues],
    fit_idx: IntArray,
) -> tuple[ValueView | None, dict[str, Any]]:
    """The value view beside the fitted detector, on the same fit records (its slots from the
    detector's fit part, its threshold from the detector's held-out part), and what the summary
    says of it (``fitted``, why not, its size)."""

    def skipped(reason: str) -> tuple[None, dict[str, Any]]:
        return None, {"fitted": False, "reason": reason}

    if not args.value_view:
        return skipped("--no-value-view")
    if not masked:
        return skipped("the text is not masked: no placeholder hides a value (the detector sees them all)")
    if not isinstance(detector, CalibratedDetector):
        return skipped(f"the {detector.name} detector has no held-out part to calibrate the value view on")
    try:
        view = fit_value_view(
            detector,
            vectors[fit_idx],
            fit_labels,
            [texts[i] for i in fit_idx],
            [values[i] for i in fit_idx],
            keep_values=args.examples,  # --no-examples: no training text, so no category test
        )
    except ValueError as exc:
        return skipped(str(exc))
    if view is None:
        return skipped("no placeholder slot has enough training values to describe")
    meta = view.meta()
    return view, {
        "fitted": True,
        "patterns": meta["patterns"],
        "slots": meta["slots"],
        "threshold": meta["threshold"],
        "target_fpr": meta["target_fpr"],
        "order_dropped": meta["order_dropped"],
        "category_tests": args.examples,
    }


def _event_scores(
    detector: Detector,
    view: ValueView | None,
    vectors: FloatArray,
    texts: list[str],
    values: list[SlotValues],
    idx: IntArray,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(event scores, detector scores) of the records ``idx``: each distinct pattern scored and
    bound once, as the pattern table does, each event scored by ``event_score`` as the agent does."""
    chosen = [texts[i] for i in idx]
    scores = detector.score(vectors[idx], chosen)
    patterns: dict[str, PatternScore] = {}
    events = np.empty(len(idx), dtype=np.float64)
    for row, (i, text) in enumerate(zip(idx.tolist(), chosen, strict=True)):
        pattern = patterns.get(text)
        if pattern is None:
            s = float(scores.score[row])
            bound = None if view is None else view.bind(text, s)
            pattern = patterns[text] = PatternScore(s, float(scores.distance[row]), 0, values=bound)
        events[row] = event_score(pattern, values[i])[0]
    return events, np.asarray(scores.score, dtype=np.float64)


def _evaluation(
    detector: Detector,
    view: ValueView | None,
    vectors: FloatArray,
    texts: list[str],
    values: list[SlotValues],
    val_idx: IntArray,
    anomalous_idx: IntArray,
    target_fpr: float,
) -> dict[str, Any]:
    """Validation FPR on held-back normals and, where the input has anomalies, detection metrics:
    of the events' scores as the agent computes them (with the value view where there is one),
    and with one, of the detector's pattern scores alone beside them."""
    evaluation: dict[str, Any] = {
        "target_fpr": target_fpr,
        "validation_fpr": None,
        "validation_records": len(val_idx),
        "value_view": view is not None,
    }
    idx = np.concatenate([val_idx, anomalous_idx])
    if not len(idx):
        return evaluation
    events, patterns = _event_scores(detector, view, vectors, texts, values, idx)
    if len(val_idx):
        evaluation["validation_fpr"] = float(np.mean(events[: len(val_idx)] > 1.0))
        if view is not None:
            evaluation["validation_fpr_without_values"] = float(np.mean(patterns[: len(val_idx)] > 1.0))
    if len(anomalous_idx):
        truth = np.concatenate([np.zeros(len(val_idx), bool), np.ones(len(anomalous_idx), bool)])
        metrics = detection_metrics(events, truth)
        evaluation["anomalies"] = {
            k: metrics[k] for k in ("auroc", "average_precision", "recall", "precision")
        }
        evaluation["anomalies"]["counts"] = metrics["counts"]
        if view is not None:
            alone = detection_metrics(patterns, truth)
            evaluation["anomalies"]["without_values"] = {k: alone[k] for k in ("auroc", "recall")}
    return evaluation


def _fit_session_model(
    args: argparse.Namespace, records: Sequence[Record], text_prep: TextPreparation
) -> tuple[SessionModel | None, dict[str, Any] | None]:
    """The session model of ``--session-key-pattern``/``--session-key-field`` (None without), fitted
    on the normal sessions of every training record in input order, and its summary (with the
    validation figures under ``validation``)."""
    if args.session_key_pattern is None and args.session_key_field is None:
        return None, None
    try:
        windows = SessionWindows(
            gap_seconds=args.session_gap_seconds,
            max_seconds=args.session_max_seconds,
            max_events=args.session_max_events,
        )
    except ValueError as exc:
        raise InputError(f"session windows: {exc}") from None
    if args.session_max_open < 1:
        raise InputError(f"--session-max-open must be at least 1, got {args.session_max_open}")
    labels = read_session_labels(args.session_labels) if args.session_labels is not None else None
    key = SessionKey(
        pattern=args.session_key_pattern, field=args.session_key_field, time_field=args.session_time_field
    )
    events = session_events(
        records,
        text_prep,
        args.input,
        key_pattern=key.pattern,
        key_field=key.field,
        time_field=key.time_field,
    )
    model, summary = fit_sessions(
        events,
        windows=windows,
        labels=labels,
        order=args.session_order,
        target_fpr=args.session_target_fpr,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        max_open=args.session_max_open,
        key=key,
        templates=args.examples,  # --no-examples: no training text, so no templates
    )
    summary["labels"] = None if args.session_labels is None else Path(args.session_labels).name
    return model, summary
