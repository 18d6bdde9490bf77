"""Detection quality of every detector on every labelled dev set, chosen by the worst case; one JSON object.

What ships is what is measured: texts go through ``agent.model.textprep.TextPreparation`` with the
masking ``train`` would choose (``training.masking.decide_mask``) and the fp32 ONNX embedder the
agent runs; detectors come from ``agent.model.detectors.create_detector`` with their default parameters
and ``--target-fpr``; they are fitted *without* labels, as ``train --input normal.jsonl
--text-field text`` fits them (detectors that need labels get them, in rows marked so); metrics
are ``training.evaluate.detection_metrics`` (AUROC, average precision, FPR of ``score > 1.0`` on
the test normals).

Splits are ``training.devdata``'s (emotion by class, BGL by time, SMS ham vs spam, CLINC150
out-of-scope, CLINC150 novel domains, Thunderbird/HDFS vs BGL lines). Besides the registered
detectors the bench measures ablations of ``fused`` (``VARIANTS``), both masking views for
``knn`` and ``fused`` (so the rule's effect is visible) and the default detector with
``calibration_split="tail"``.

The summary ranks candidates by their worst case: for each set the gap to the best candidate on
that set, and the largest gap over all sets (``worst_gap``); ``vs_seeds`` is the smallest margin
over the seeds' method (``kmeans``) on any set. The default of ``train`` must be the unlabelled
candidate with the smallest ``worst_gap`` (tests/test_quality_defaults.py reads docs/detectors.md).

Embeddings are cached per (embedder, texts) under ``<cache root>/quality/`` because embedding
~50k texts takes minutes on two cores; delete the folder to recompute.

    .venv/bin/python bench/quality.py [--datasets emotion,bgl,...] [--detectors knn,fused,...]
        [--target-fpr 0.01] [--threads 2] [--int8]

``--int8`` runs everything with the fp32 and the int8 export side by side and reports, per cell,
the AUROC the int8 embedder loses (``int8_vs_fp32``, ``max_auroc_loss``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.model.cache import default_cache_root  # noqa: E402
from agent.model.defaults import DEFAULT_DETECTOR  # noqa: E402
from agent.model.detectors import DETECTORS, create_detector  # noqa: E402
from agent.model.embedder import OnnxEmbedder  # noqa: E402
from agent.model.textprep import TextPreparation  # noqa: E402
from training import devdata  # noqa: E402
from training.evaluate import detection_metrics  # noqa: E402
from training.export import cached_export  # noqa: E402
from training.masking import decide_mask  # noqa: E402

#: ablations of the fused detector: (candidate name, constructor keywords).
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fused[knn+kmeans]", {"components": ["knn", "kmeans"]}),
    ("fused[knn+tfidf+unseen]", {"components": ["knn", "tfidf", "unseen"]}),
    ("fused[tfidf+unseen]", {"components": ["tfidf", "unseen"]}),
)
#: the seeds' method every default is compared with.
SEEDS_METHOD = "kmeans"


def embed_cached(
    embedder: OnnxEmbedder, embedder_dir: Path, texts: Sequence[str], cache: Path
) -> npt.NDArray[np.float32]:
    """Embeddings of ``texts`` (unique texts embedded once), cached by embedder manifest + texts."""
    unique = sorted(set(texts))
    key = hashlib.sha256((embedder_dir / "embedder.json").read_bytes())
    key.update("\x00".join(unique).encode("utf-8"))
    path = cache / f"{key.hexdigest()[:32]}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
    else:
        vectors = embedder.embed(unique)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors, allow_pickle=False)
        tmp.replace(path)
    row = {text: i for i, text in enumerate(unique)}
    return np.asarray(vectors[[row[t] for t in texts]], dtype=np.float32)


def prepared(prep: TextPreparation, records: Sequence[dict[str, str]]) -> list[str]:
    return [prep.prepare(prep.extract(record)) for record in records]


def run(args: argparse.Namespace, embedder_dir: Path | None = None) -> dict[str, Any]:
    embedder_dir = embedder_dir or args.embedder or cached_export()
    embedder = OnnxEmbedder(embedder_dir, intra_op_threads=args.threads)
    cache = args.cache_dir or default_cache_root() / "quality"
    results: list[dict[str, Any]] = []
    masking: dict[str, Any] = {}
    for name in args.datasets:
        split = devdata.load(name, args.datasets_dir)
        truth = split.test_is_anomaly
        base = TextPreparation(fields=split.text_fields)
        extracted = [base.extract(r) for r in split.train_records]
        decision = decide_mask(extracted, base, None)
        masking[name] = decision.to_dict()
        views = {}
        for mask in (decision.mask, not decision.mask):
            prep = replace(base, mask=mask)
            train_t, test_t = prepared(prep, split.train_records), prepared(prep, split.test_records)
            views[mask] = (
                prep,
                train_t,
                test_t,
                embed_cached(embedder, embedder_dir, train_t, cache),
                embed_cached(embedder, embedder_dir, test_t, cache),
            )
        several_classes = len(set(split.train_labels)) > 1
        for candidate, detector_name, params, mask, labelled in _cells(args, decision.mask, several_classes):
            prep, train_t, test_t, train_x, test_x = views[mask]
            row: dict[str, Any] = {
                "dataset": name,
                "candidate": candidate,
                "detector": detector_name,
                "text_prep": _prep(prep),
                "mask_by_rule": mask == decision.mask,
                "labels": labelled,
                "params": params,
            }
            detector = create_detector(detector_name, target_fpr=args.target_fpr, seed=args.seed, **params)
            started = time.perf_counter()
            try:
                detector.fit(train_x, np.asarray(split.train_labels) if labelled else None, train_t)
            except ValueError as exc:  # e.g. hdbscan finding no cluster: a result, not a crash
                results.append(row | {"error": str(exc)})
                print(f"{name} {candidate}: {exc}", file=sys.stderr, flush=True)
                continue
            fit_s = time.perf_counter() - started
            started = time.perf_counter()
            scores = detector.score(test_x, test_t).score
            score_s = time.perf_counter() - started
            metrics = detection_metrics(scores, truth)
            results.append(
                row
                | {k: _round(v) for k, v in metrics.items() if k != "counts"}
                | {
                    "test_normal_fpr": _round(float(np.mean(scores[~truth] > 1.0))),
                    "counts": metrics["counts"],
                    "fit_seconds": round(fit_s, 3),
                    "score_us_per_event": round(1e6 * score_s / max(1, len(test_x)), 2),
                }
            )
            print(_line(results[-1]), file=sys.stderr, flush=True)
    return {
        "embedder": json.loads((embedder_dir / "embedder.json").read_text(encoding="utf-8")).get("model_id"),
        "quantization": "int8" if _is_int8(embedder_dir) else "fp32",
        "target_fpr": args.target_fpr,
        "seed": args.seed,
        "default_detector": DEFAULT_DETECTOR,
        "splits": {name: _split_doc(name) for name in args.datasets},
        "masking": masking,
        "summary": summarize(results, args.datasets),
        "results": results,
    }


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


def summarize(results: list[dict[str, Any]], datasets: Sequence[str]) -> dict[str, Any]:
    """Per unlabelled candidate on the rule's masking: AUROC per set, gap to the best, worst case."""
    cells = [r for r in results if r.get("auroc") is not None and r["mask_by_rule"] and not r["labels"]]
    best = {d: max((r["auroc"] for r in cells if r["dataset"] == d), default=None) for d in datasets}
    seeds = {r["dataset"]: r["auroc"] for r in cells if r["candidate"] == SEEDS_METHOD}
    table: dict[str, Any] = {}
    for candidate in dict.fromkeys(r["candidate"] for r in cells):
        mine = {r["dataset"]: r for r in cells if r["candidate"] == candidate}
        if set(mine) != set(datasets):
            continue
        gaps = {d: round(best[d] - mine[d]["auroc"], 4) for d in datasets if best[d] is not None}
        table[candidate] = {
            "auroc": {d: mine[d]["auroc"] for d in datasets},
            "test_normal_fpr": {d: mine[d]["test_normal_fpr"] for d in datasets},
            "gap_to_best": gaps,
            "worst_gap": max(gaps.values()),
            "worst_set": max(gaps, key=lambda d: gaps[d]),
            "vs_seeds": round(min(mine[d]["auroc"] - seeds[d] for d in datasets), 4)
            if set(seeds) == set(datasets)
            else None,
        }
    ranked = sorted(table, key=lambda c: table[c]["worst_gap"])
    return {"best_per_set": best, "candidates": table, "by_worst_case": ranked}


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
    return f"{r['dataset']:17s} {prep:9s} {r['candidate']:32s} {metrics} ({r['fit_seconds']} s fit)"


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
