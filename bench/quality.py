"""Detection quality of every candidate on every labelled dev set against two anchors; one JSON object.

What ships is what is measured: texts go through ``agent.model.textprep.TextPreparation`` with the
masking ``train`` would choose (``training.masking.decide_mask``) and the fp32 ONNX embedder the
agent runs; detectors come from ``agent.model.detectors.create_detector`` with their default
parameters and ``--target-fpr``, fitted *without* labels as ``train --input normal.jsonl
--text-field text`` fits them (detectors that need labels get them, in rows marked so); a
``<detector>+values`` candidate adds the value view (``agent.model.values.fit_value_view``) beside
the same fitted detector. Metrics are ``training.evaluate.detection_metrics``.

Splits are ``training.devdata``'s (emotion by class, BGL by time, SMS ham vs spam, CLINC150
out-of-scope, CLINC150 novel domains, Thunderbird/HDFS vs BGL lines, HTTP request payloads).

Anchors, computed in the same run on the *raw* (unmasked) texts and the same embeddings
    ``seeds_kmeans_radius``: the seeds' method — k-means with k = the number of normal classes,
    each centroid's radius the 99th percentile of its members' training distances, score =
    distance to the nearest centroid / its radius; ``knn5``: mean cosine distance to the 5
    nearest training vectors. Both on every training vector (no calibration split: the anchors
    rank, they do not threshold). ``better_anchor`` is the larger AUROC of the two.

Summary (``summary``)
    per unlabelled candidate on the rule's masking: AUROC per set, ``gap_to_anchor`` (better
    anchor − AUROC; positive = below it), ``worst_gap`` and its set, and ``meets_target`` (worst
    gap ≤ ``TARGET_GAP``); candidates are ranked by the worst gap. ``default`` names the
    candidate ``train`` fits (``DEFAULT_CANDIDATE``): its worst gap is the number that picks it.

Calibration (``calibration``)
    per set: the target FPR, the FPR measured on the test normals with the default calibration
    (random held-out part) and with ``tail``; for sets in time order (``devdata.TIME_ORDERED``)
    also the forward-chained measurement on the training data alone (``forward_chain``): fit on
    the first s of ``SLICES`` slices in input order, measure the FPR on slice s + 1 — the range of
    those FPRs is the expected FPR on later data, and the drift margin
    (``calibration.drift_margin``) is what the threshold would have needed to hold the target
    there; the test FPR and recall with that margin are reported beside.

Value view cost (``value_view_cost``): on the ``logs`` set's test lines, µs per event of
``prepare`` vs ``prepare_values`` and of ``BoundPattern.score`` on pattern-table hits.

Embeddings are cached per (embedder, set) under ``<cache root>/quality/``: embedding the ~70k
distinct texts of both masking views takes tens of minutes on two cores; delete the folder to
recompute.

    .venv/bin/python bench/quality.py [--datasets emotion,bgl,...] [--detectors knn,fused,...]
        [--target-fpr 0.01] [--threads 2] [--no-variants] [--int8]

``--int8`` runs everything with the fp32 and the int8 export side by side and reports, per cell,
the AUROC the int8 embedder loses (``int8_vs_fp32``, ``max_auroc_loss``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.model.cache import default_cache_root  # noqa: E402
from agent.model.defaults import DEFAULT_DETECTOR  # noqa: E402
from agent.model.detectors import DETECTORS, create_detector  # noqa: E402
from agent.model.detectors._common import CalibratedDetector  # noqa: E402
from agent.model.detectors.calibration import drift_margin  # noqa: E402
from agent.model.detectors.fused import COMPONENTS  # noqa: E402
from agent.model.embedder import OnnxEmbedder  # noqa: E402
from agent.model.textprep import SlotValues, TextPreparation  # noqa: E402
from agent.model.values import BoundPattern, ValueView, fit_value_view  # noqa: E402
from training import devdata  # noqa: E402
from training.evaluate import detection_metrics  # noqa: E402
from training.export import cached_export  # noqa: E402
from training.masking import decide_mask  # noqa: E402

#: ablations of the fused detector: (candidate name, constructor keywords). The first is the
#: default before issue 19 (all four measures, Fisher's sum).
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fused[fisher,+kmeans]", {"components": list(COMPONENTS), "fusion": "fisher"}),
    ("fused[fisher]", {"fusion": "fisher"}),
    ("fused[+kmeans]", {"components": list(COMPONENTS)}),
    ("fused[knn]", {"components": ["knn"]}),
)
#: detectors also measured with the value view beside them.
WITH_VALUES = ("fused", "knn", "kmeans")
#: what ``train`` fits by default: the default detector with the value view where it masks.
DEFAULT_CANDIDATE = f"{DEFAULT_DETECTOR}+values"
#: the registered detector that is the seeds' method (``vs_seeds``).
SEEDS_METHOD = "kmeans"
ANCHORS = ("seeds_kmeans_radius", "knn5")
#: the issue's target: never more than this below the better anchor on any set.
TARGET_GAP = 0.01
#: time slices of the training data for the forward-chained FPR measurement.
SLICES = 5


@dataclass(frozen=True)
class View:
    """One masking view of a split: prepared texts, their values and vectors."""

    prep: TextPreparation
    train_texts: list[str]
    test_texts: list[str]
    train_values: list[SlotValues]
    test_values: list[SlotValues]
    train_x: npt.NDArray[np.float32]
    test_x: npt.NDArray[np.float32]


def embed_cached(
    embedder: OnnxEmbedder, embedder_dir: Path, texts: Sequence[str], cache: Path
) -> dict[str, npt.NDArray[np.float32]]:
    """Embedding of each distinct text (embedded once), cached by embedder manifest + the text set."""
    unique = sorted(set(texts))
    key = hashlib.sha256((embedder_dir / "embedder.json").read_bytes())
    key.update("\x00".join(unique).encode("utf-8", "surrogatepass"))
    path = cache / f"{key.hexdigest()[:32]}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
    else:
        started = time.perf_counter()
        vectors = embedder.embed(unique)
        print(f"embedded {len(unique)} texts in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors, allow_pickle=False)
        tmp.replace(path)
    return dict(zip(unique, np.asarray(vectors, dtype=np.float32), strict=True))


def prepared(prep: TextPreparation, records: Sequence[dict[str, str]]) -> tuple[list[str], list[SlotValues]]:
    pairs = [prep.prepare_values(prep.extract(record)) for record in records]
    return [p for p, _ in pairs], [v for _, v in pairs]


def load_views(
    split: devdata.DevSplit, embed: Callable[[Sequence[str]], dict[str, npt.NDArray[np.float32]]]
) -> dict[bool, View]:
    """Both masking views of a split, embedded together (one cache entry per set)."""
    base = TextPreparation(fields=split.text_fields)
    texts: dict[bool, tuple[TextPreparation, list[str], list[SlotValues], list[str], list[SlotValues]]] = {}
    for mask in (True, False):
        prep = replace(base, mask=mask)
        train_t, train_v = prepared(prep, split.train_records)
        test_t, test_v = prepared(prep, split.test_records)
        texts[mask] = (prep, train_t, train_v, test_t, test_v)
    vectors = embed([t for _, a, _, b, _ in texts.values() for t in (*a, *b)])

    def stack(batch: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([vectors[t] for t in batch]).astype(np.float32)

    return {
        mask: View(prep, train_t, test_t, train_v, test_v, stack(train_t), stack(test_t))
        for mask, (prep, train_t, train_v, test_t, test_v) in texts.items()
    }


def seeds_kmeans_radius(
    train_x: npt.NDArray[np.float32], train_labels: Sequence[str], test_x: npt.NDArray[np.float32], seed: int
) -> npt.NDArray[np.float64]:
    """The seeds' score: distance to the nearest k-means centroid / that centroid's 99th-percentile
    radius, k = the number of normal classes (1 when unlabelled)."""
    from sklearn.cluster import KMeans

    k = min(len(set(train_labels)), len(np.unique(train_x, axis=0)))
    model = KMeans(k, n_init="auto", random_state=seed).fit(train_x.astype(np.float64))
    centers = model.cluster_centers_
    train_d = np.linalg.norm(train_x - centers[model.labels_], axis=1)
    radius = np.array(
        [
            np.percentile(train_d[model.labels_ == c], 99) if np.any(model.labels_ == c) else 0.0
            for c in range(k)
        ]
    )
    test_c = model.predict(test_x.astype(np.float64))
    test_d = np.linalg.norm(test_x - centers[test_c], axis=1)
    return np.asarray(test_d / np.maximum(radius[test_c], 1e-6), dtype=np.float64)


def knn5(
    train_x: npt.NDArray[np.float32], test_x: npt.NDArray[np.float32], k: int = 5
) -> npt.NDArray[np.float64]:
    """Mean cosine distance to the k nearest training vectors (all of them the reference)."""
    out = np.empty(len(test_x), dtype=np.float64)
    n = min(k, len(train_x))
    for start in range(0, len(test_x), 1024):
        similarity = test_x[start : start + 1024] @ train_x.T
        top = -np.partition(-similarity, n - 1, axis=1)[:, :n]
        out[start : start + len(top)] = np.clip(1.0 - top, 0.0, 2.0).mean(axis=1)
    return out


def value_scores(
    view: ValueView | None,
    test_scores: npt.NDArray[np.float64],
    texts: list[str],
    values: list[SlotValues],
) -> npt.NDArray[np.float64]:
    """Each test event's score with the value view, through a pattern table as the agent keeps it."""
    if view is None:
        return test_scores
    table: dict[str, BoundPattern] = {}
    out = np.empty(len(texts), dtype=np.float64)
    for i, (text, slot_values) in enumerate(zip(texts, values, strict=True)):
        bound = table.get(text)
        if bound is None:
            bound = table[text] = view.bind(text, float(test_scores[i]))
        out[i] = bound.score(slot_values.values)
    return out


def fit_and_score(
    detector_name: str,
    params: dict[str, Any],
    with_values: bool,
    view: View,
    train_idx: npt.NDArray[np.int64],
    labels: Sequence[str] | None,
    test: tuple[npt.NDArray[np.float32], list[str], list[SlotValues]],
    args: argparse.Namespace,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None, ValueView | None]:
    """Fit ``detector_name`` on the training events ``train_idx`` of ``view``; the test scores
    without and (``with_values``) with the value view, and the view."""
    detector = create_detector(detector_name, target_fpr=args.target_fpr, seed=args.seed, **params)
    assert isinstance(detector, CalibratedDetector)
    train_x, train_t = view.train_x[train_idx], [view.train_texts[i] for i in train_idx]
    fit_labels = None if labels is None else np.asarray(labels)[train_idx]
    detector.fit(train_x, fit_labels, train_t)
    test_x, test_t, test_v = test
    plain = detector.score(test_x, test_t).score
    if not with_values:
        return plain, None, None
    values = fit_value_view(detector, train_x, fit_labels, train_t, [view.train_values[i] for i in train_idx])
    return plain, value_scores(values, plain, test_t, test_v), values


def run(args: argparse.Namespace, embedder_dir: Path | None = None) -> dict[str, Any]:
    embedder_dir = embedder_dir or args.embedder or cached_export()
    embedder = OnnxEmbedder(embedder_dir, intra_op_threads=args.threads)
    cache = args.cache_dir or default_cache_root() / "quality"
    results: list[dict[str, Any]] = []
    masking: dict[str, Any] = {}
    anchors: dict[str, dict[str, float]] = {}
    calibration: dict[str, Any] = {}
    cost: dict[str, Any] | None = None
    for name in args.datasets:
        split = devdata.load(name, args.datasets_dir)
        truth = split.test_is_anomaly
        base = TextPreparation(fields=split.text_fields)
        extracted = [base.extract(r) for r in split.train_records]
        decision = decide_mask(extracted, base, None, value_view=True)
        merge_rule = decide_mask(extracted, base, None)
        masking[name] = decision.to_dict() | {"without_value_view": merge_rule.mask}
        views = load_views(split, lambda texts: embed_cached(embedder, embedder_dir, texts, cache))
        raw = views[False]
        anchors[name] = _anchors(raw, split, truth, args.seed)
        print(f"{name:17s} anchors {anchors[name]}", file=sys.stderr, flush=True)
        several_classes = len(set(split.train_labels)) > 1
        everything = np.arange(len(split.train_records), dtype=np.int64)
        for candidate, detector_name, params, mask, labelled in _cells(args, decision.mask, several_classes):
            view = views[mask]
            row: dict[str, Any] = {
                "dataset": name,
                "candidate": candidate,
                "detector": detector_name,
                "text_prep": _prep(view.prep),
                "mask_by_rule": mask == decision.mask,
                "labels": labelled,
                "params": params,
            }
            with_values = detector_name in WITH_VALUES and not labelled
            started = time.perf_counter()
            try:
                plain, valued, value_view = fit_and_score(
                    detector_name,
                    params,
                    with_values,
                    view,
                    everything,
                    split.train_labels if labelled else None,
                    (view.test_x, view.test_texts, view.test_values),
                    args,
                )
            except ValueError as exc:  # e.g. hdbscan finding no cluster: a result, not a crash
                results.append(row | {"error": str(exc)})
                print(f"{name} {candidate}: {exc}", file=sys.stderr, flush=True)
                continue
            seconds = time.perf_counter() - started
            results.append(_row(row, plain, truth, seconds))
            print(_line(results[-1]), file=sys.stderr, flush=True)
            if valued is not None:
                suffix = candidate.removeprefix(detector_name)
                value_row = row | {
                    "candidate": f"{detector_name}+values{suffix}",
                    "value_view": None if value_view is None else value_view.meta(),
                }
                results.append(_row(value_row, valued, truth, seconds))
                print(_line(results[-1]), file=sys.stderr, flush=True)
                if name == "logs" and value_view is not None and detector_name == DEFAULT_DETECTOR and mask:
                    cost = value_view_cost(view, split, value_view, plain)
        calibration[name] = _calibration(name, views[decision.mask], split, truth, results, args)
    return {
        "embedder": json.loads((embedder_dir / "embedder.json").read_text(encoding="utf-8")).get("model_id"),
        "quantization": "int8" if _is_int8(embedder_dir) else "fp32",
        "target_fpr": args.target_fpr,
        "seed": args.seed,
        "default_detector": DEFAULT_DETECTOR,
        "default_candidate": DEFAULT_CANDIDATE,
        "splits": {name: _split_doc(name) for name in args.datasets},
        "masking": masking,
        "anchors": anchors,
        "summary": summarize(results, args.datasets, anchors),
        "calibration": calibration,
        "value_view_cost": cost,
        "results": results,
    }


def _anchors(raw: View, split: devdata.DevSplit, truth: npt.NDArray[np.bool_], seed: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    seeds = seeds_kmeans_radius(raw.train_x, split.train_labels, raw.test_x, seed)
    knn = knn5(raw.train_x, raw.test_x)
    out = {
        "seeds_kmeans_radius": float(roc_auc_score(truth, seeds)),
        "knn5": float(roc_auc_score(truth, knn)),
    }
    return {k: round(v, 4) for k, v in out.items()} | {"better": round(max(out.values()), 4)}


def _row(
    row: dict[str, Any], scores: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_], seconds: float
) -> dict[str, Any]:
    metrics = detection_metrics(scores, truth)
    return (
        row
        | {k: _round(v) for k, v in metrics.items() if k != "counts"}
        | {
            "test_normal_fpr": _round(float(np.mean(scores[~truth] > 1.0))),
            "counts": metrics["counts"],
            "seconds": round(seconds, 3),
        }
    )


def _cells(
    args: argparse.Namespace, mask: bool, several_classes: bool
) -> list[tuple[str, str, dict[str, Any], bool, bool]]:
    """(candidate, detector, params, mask, labelled) for one dataset, in the order they run."""
    cells: list[tuple[str, str, dict[str, Any], bool, bool]] = []
    for name in args.detectors:
        if getattr(DETECTORS[name], "requires_labels", False):
            if several_classes:
                cells.append((f"{name} (labels)", name, {}, mask, True))
            continue
        cells.append((name, name, {}, mask, False))
    if not args.variants:
        return cells
    cells += [(candidate, "fused", params, mask, False) for candidate, params in VARIANTS]
    cells += [(f"{name} (other masking)", name, {}, not mask, False) for name in ("knn", DEFAULT_DETECTOR)]
    cells += [(f"{name} (other masking)", "fused", params, not mask, False) for name, params in VARIANTS[:1]]
    cells.append(
        (
            f"{DEFAULT_DETECTOR} (tail calibration)",
            DEFAULT_DETECTOR,
            {"calibration_split": "tail"},
            mask,
            False,
        )
    )
    return cells


def summarize(
    results: list[dict[str, Any]], datasets: Sequence[str], anchors: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Per unlabelled candidate on the rule's masking: AUROC per set, gap to the better anchor
    and to the best candidate, the worst case; candidates ranked by their worst gap to the anchor."""
    cells = [r for r in results if r.get("auroc") is not None and r["mask_by_rule"] and not r["labels"]]
    best = {d: max((r["auroc"] for r in cells if r["dataset"] == d), default=None) for d in datasets}
    seeds = {r["dataset"]: r["auroc"] for r in cells if r["candidate"] == SEEDS_METHOD}
    table: dict[str, Any] = {}
    for candidate in dict.fromkeys(r["candidate"] for r in cells):
        mine = {r["dataset"]: r for r in cells if r["candidate"] == candidate}
        if set(mine) != set(datasets):
            continue
        gaps = {d: round(anchors[d]["better"] - mine[d]["auroc"], 4) for d in datasets}
        table[candidate] = {
            "auroc": {d: mine[d]["auroc"] for d in datasets},
            "test_normal_fpr": {d: mine[d]["test_normal_fpr"] for d in datasets},
            "gap_to_anchor": gaps,
            "worst_gap": max(gaps.values()),
            "worst_set": max(gaps, key=lambda d: gaps[d]),
            "meets_target": max(gaps.values()) <= TARGET_GAP,
            "gap_to_best": {d: round(best[d] - mine[d]["auroc"], 4) for d in datasets if best[d] is not None},
            "vs_seeds": round(min(mine[d]["auroc"] - seeds[d] for d in datasets), 4)
            if set(seeds) == set(datasets)
            else None,
        }
    ranked = sorted(table, key=lambda c: table[c]["worst_gap"])
    return {
        "target_gap": TARGET_GAP,
        "better_anchor": {d: anchors[d]["better"] for d in datasets},
        "best_per_set": best,
        "candidates": table,
        "by_worst_case": ranked,
        "default": table.get(DEFAULT_CANDIDATE),
    }


def _calibration(
    name: str,
    view: View,
    split: devdata.DevSplit,
    truth: npt.NDArray[np.bool_],
    results: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Target vs measured FPR for the default; forward-chained drift measurement on time order."""

    def fpr(candidate: str) -> float | None:
        found = [
            r for r in results if r["dataset"] == name and r["candidate"] == candidate and r["mask_by_rule"]
        ]
        return found[0].get("test_normal_fpr") if found else None

    out: dict[str, Any] = {
        "target_fpr": args.target_fpr,
        "time_ordered": name in devdata.TIME_ORDERED,
        "random": fpr(DEFAULT_CANDIDATE),
        "tail": fpr(f"{DEFAULT_CANDIDATE} (tail calibration)"),
    }
    if name not in devdata.TIME_ORDERED:
        return out
    n = len(view.train_texts)
    edges = np.linspace(0, n, SLICES + 1).round().astype(np.int64)
    forward = []
    later_scores = []
    for s in range(2, SLICES):
        train_idx = np.arange(edges[s], dtype=np.int64)
        later = np.arange(edges[s], edges[s + 1], dtype=np.int64)
        test = (
            view.train_x[later],
            [view.train_texts[i] for i in later],
            [view.train_values[i] for i in later],
        )
        plain, valued, _ = fit_and_score(DEFAULT_DETECTOR, {}, True, view, train_idx, None, test, args)
        scores = plain if valued is None else valued
        later_scores.append(scores)
        forward.append(
            {
                "fit_events": int(edges[s]),
                "later_events": len(later),
                "fpr": _round(float(np.mean(scores > 1.0))),
            }
        )
    margin = drift_margin(later_scores, args.target_fpr)
    everything = np.arange(n, dtype=np.int64)
    plain, valued, _ = fit_and_score(
        DEFAULT_DETECTOR,
        {},
        True,
        view,
        everything,
        None,
        (view.test_x, view.test_texts, view.test_values),
        args,
    )
    scores = (plain if valued is None else valued) / margin
    return out | {
        "forward_chain": forward,
        "expected_fpr_range": [min(f["fpr"] for f in forward), max(f["fpr"] for f in forward)],
        "drift_margin": _round(margin),
        "with_margin": {
            "test_normal_fpr": _round(float(np.mean(scores[~truth] > 1.0))),
            "recall": _round(float(np.mean(scores[truth] > 1.0))),
        },
        "without_margin_recall": _round(float(np.mean(scores[truth] * margin > 1.0))),
    }


def value_view_cost(
    view: View, split: devdata.DevSplit, values: ValueView, pattern_scores: npt.NDArray[np.float64]
) -> dict[str, Any]:
    """µs per event: ``prepare`` vs ``prepare_values`` on the set's test lines, and the value
    view's per-event score on pattern-table hits (best of 5 runs each)."""
    extracted = [view.prep.extract(r) for r in split.test_records]
    table = {}
    for text, score in zip(view.test_texts, pattern_scores.tolist(), strict=True):
        table.setdefault(text, values.bind(text, score))
    hits = [(table[t], v.values) for t, v in zip(view.test_texts, view.test_values, strict=True)]
    n = len(extracted)

    def best(fn: Callable[[], object]) -> float:
        return round(min(timeit.repeat(fn, number=1, repeat=5)) / n * 1e6, 2)

    prep = view.prep
    return {
        "events": n,
        "values_per_event": round(sum(len(v.values or ()) for v in view.test_values) / n, 2),
        "prepare_us": best(lambda: [prep.prepare(t) for t in extracted]),
        "prepare_values_us": best(lambda: [prep.prepare_values(t) for t in extracted]),
        "value_score_us": best(lambda: [b.score(v) for b, v in hits]),
    }


def _split_doc(name: str) -> str:
    """The first line of the split's description in training.devdata's module docstring."""
    doc = devdata.__doc__ or ""
    marker = f"- ``{name}``:"
    if marker not in doc:
        return name
    text = doc.split(marker, 1)[1].split("\n- ``", 1)[0]
    return " ".join(text.split())


def _is_int8(embedder_dir: Path) -> bool:
    manifest = json.loads((embedder_dir / "embedder.json").read_text(encoding="utf-8"))
    return bool(manifest.get("int8") or manifest.get("quantization") == "int8" or "int8" in embedder_dir.name)


def int8_beside_fp32(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench with the fp32 and the int8 export, and the AUROC each cell loses with int8."""
    fp32 = run(args, cached_export())
    int8 = run(args, cached_export(int8=True))

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["dataset"], json.dumps(r["text_prep"], sort_keys=True), r["candidate"]

    by_key = {key(r): r for r in int8["results"]}
    deltas = []
    for r in fp32["results"]:
        other = by_key.get(key(r))
        if other is None or r.get("auroc") is None or other.get("auroc") is None:
            continue
        deltas.append(
            {
                "dataset": r["dataset"],
                "text_prep": r["text_prep"],
                "mask_by_rule": r["mask_by_rule"],
                "candidate": r["candidate"],
                "auroc_fp32": r["auroc"],
                "auroc_int8": other["auroc"],
                "auroc_loss": _round(r["auroc"] - other["auroc"]),
            }
        )
    return {
        "fp32": fp32,
        "int8": int8,
        "int8_vs_fp32": deltas,
        "max_auroc_loss": max((d["auroc_loss"] for d in deltas), default=None),
    }


def _prep(prep: TextPreparation) -> dict[str, Any]:
    return {"fields": list(prep.fields), "mask": prep.mask}


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _line(r: dict[str, Any]) -> str:
    prep = "masked" if r["text_prep"]["mask"] else "unmasked"
    metrics = f"AUROC {r['auroc']} AP {r['average_precision']} FPR {r['test_normal_fpr']}"
    return f"{r['dataset']:17s} {prep:9s} {r['candidate']:40s} {metrics} ({r['seconds']} s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=_csv, default=list(devdata.DATASET_NAMES))
    parser.add_argument("--detectors", type=_csv, default=sorted(DETECTORS))
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="only the registered detectors (no fused ablations, other masking, tail calibration)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    parser.add_argument(
        "--embedder", type=Path, default=None, help="exported embedder (default: cached fp32 export)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="embedding cache (default: <cache root>/quality)"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="run with the fp32 and the int8 export and report the AUROC difference",
    )
    args = parser.parse_args(argv)
    unknown = [d for d in args.detectors if d not in DETECTORS] + [
        d for d in args.datasets if d not in devdata.DATASET_NAMES
    ]
    if unknown:
        parser.error(f"unknown detector/dataset: {', '.join(unknown)}")
    print(json.dumps(int8_beside_fp32(args) if args.int8 else run(args), indent=2))
    return 0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


if __name__ == "__main__":
    sys.exit(main())
