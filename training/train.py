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

Prints one JSON summary to stdout; progress goes to stderr. The embedder default is
``training.export.cached_export()`` (exported once per machine), imported only here so that score
and evaluate never import torch.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.model.bundle import BundleError, write_bundle
from agent.model.detectors import create_detector
from agent.model.detectors.base import Detector, FloatArray
from agent.model.detectors.calibration import holdout_split
from agent.model.embedder import EmbedderError, OnnxEmbedder
from agent.model.examples import MAX_KNOWN_PATTERNS, Examples, KnownPatterns, rank_patterns
from agent.model.textprep import TextPreparation
from training.evaluate import detection_metrics
from training.feedback_fold import normal_templates
from training.masking import decide_mask
from training.rates import rate_seeds
from training.records import (
    InputError,
    detect_format,
    extracted_texts,
    labels_of,
    parse_normal_labels,
    read_records,
    text_prep_for_input,
)
from training.score import embed_texts, fail

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


def _train(args: argparse.Namespace) -> int:
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
    masking = decide_mask([extracted[i] for i in normal_idx], base_prep, args.mask)
    text_prep = replace(base_prep, mask=masking.mask)
    texts = [text_prep.prepare(t) for t in extracted]

    if args.validation_fraction > 0:
        strata = None if labels is None else np.asarray(labels)[normal_idx]
        fit_pos, val_pos = holdout_split(
            len(normal_idx),
            fraction=args.validation_fraction,
            seed=args.seed,
            strata=strata,
            order=args.calibration_split,
        )
        fit_idx, val_idx = normal_idx[fit_pos], normal_idx[val_pos]
    else:
        fit_idx, val_idx = normal_idx, normal_idx[:0]
    if folded is not None and folded.templates:
        # Patterns operators marked normal: fitted as normal records (not validated: they must not
        # move the threshold), labelled like the most common normal record where there are labels.
        added = np.arange(len(texts), len(texts) + len(folded.templates))
        texts += [text_prep.prepare(t) for t in folded.templates]
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

    evaluation = _evaluation(detector, vectors, texts, val_idx, anomalous_idx, args.target_fpr)
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


def _evaluation(
    detector: Detector,
    vectors: FloatArray,
    texts: list[str],
    val_idx: IntArray,
    anomalous_idx: IntArray,
    target_fpr: float,
) -> dict[str, Any]:
    """Validation FPR on held-back normals and, where the input has anomalies, detection metrics."""
    evaluation: dict[str, Any] = {
        "target_fpr": target_fpr,
        "validation_fpr": None,
        "validation_records": len(val_idx),
    }
    if len(val_idx):
        scores = detector.score(vectors[val_idx], [texts[i] for i in val_idx]).score
        evaluation["validation_fpr"] = float(np.mean(scores > 1.0))
    if len(anomalous_idx):
        idx = np.concatenate([val_idx, anomalous_idx])
        truth = np.concatenate([np.zeros(len(val_idx), bool), np.ones(len(anomalous_idx), bool)])
        metrics = detection_metrics(detector.score(vectors[idx], [texts[i] for i in idx]).score, truth)
        evaluation["anomalies"] = {
            k: metrics[k] for k in ("auroc", "average_precision", "recall", "precision")
        }
        evaluation["anomalies"]["counts"] = metrics["counts"]
    return evaluation
