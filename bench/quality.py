"""Detection quality of every registered detector on the three dev sets; prints one JSON object.

What ships is what is measured: texts go through ``agent.textprep.TextPreparation`` (extract +
prepare) and the fp32 ONNX embedder the agent runs (``OnnxEmbedder`` on
``training.export.cached_export()``); detectors come from ``agent.detectors.create_detector`` with
their default parameters and ``--target-fpr``; metrics are ``training.evaluate.detection_metrics``
(AUROC, average precision, and precision / recall / F1 / FPR of ``score > 1.0``).

Splits are ``training.devdata``'s (emotion: train joy/sadness/anger -> test; BGL: first half's
normal lines -> second half; SMS: seeded 80/20 ham split -> held-out ham + all spam). Each dataset
runs under a few text preparations (see ``VARIANTS``) so the effect of fields and masking is
visible next to the detector choice; the first variant of each dataset is the recommended one.
Normal labels are passed to ``fit`` (as ``train --label-field`` would), which only matters where
there are several normal classes (emotion).

Embeddings are cached per (embedder, texts) under ``<cache root>/quality/`` because embedding
~20k texts takes minutes on two cores; delete the folder to recompute.

    .venv/bin/python bench/quality.py [--datasets emotion,bgl,sms] [--detectors knn,kmeans]
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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.cache import default_cache_root  # noqa: E402
from agent.detectors import DETECTORS, create_detector  # noqa: E402
from agent.embedder import OnnxEmbedder  # noqa: E402
from agent.textprep import TextPreparation  # noqa: E402
from training import devdata  # noqa: E402
from training.evaluate import detection_metrics  # noqa: E402
from training.export import cached_export  # noqa: E402

#: text preparations per dataset, recommended first. BGL's "message" variants are the seeds' input.
VARIANTS: dict[str, list[TextPreparation]] = {
    "emotion": [TextPreparation(fields=("text",), mask=False)],
    "bgl": [
        TextPreparation(fields=("component", "level", "message"), mask=True),
        TextPreparation(fields=("component", "level", "message"), mask=False),
        TextPreparation(fields=("message",), mask=True),
        TextPreparation(fields=("message",), mask=False),
    ],
    "sms": [
        TextPreparation(fields=("text",), mask=False),
        TextPreparation(fields=("text",), mask=True),
    ],
}


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
    for name in args.datasets:
        split = devdata.load(name, args.datasets_dir)
        truth = split.test_is_anomaly
        train_labels = np.asarray(split.train_labels)
        for variant, prep in enumerate(VARIANTS[name]):
            train_x = embed_cached(embedder, embedder_dir, prepared(prep, split.train_records), cache)
            test_x = embed_cached(embedder, embedder_dir, prepared(prep, split.test_records), cache)
            for detector_name in args.detectors:
                detector = create_detector(detector_name, target_fpr=args.target_fpr, seed=args.seed)
                started = time.perf_counter()
                try:
                    detector.fit(train_x, train_labels)
                except ValueError as exc:  # e.g. hdbscan finding no cluster: a result, not a crash
                    results.append(
                        {
                            "dataset": name,
                            "text_prep": _prep(prep),
                            "detector": detector_name,
                            "error": str(exc),
                        }
                    )
                    print(f"{name} {detector_name}: {exc}", file=sys.stderr, flush=True)
                    continue
                fit_s = time.perf_counter() - started
                started = time.perf_counter()
                scores = detector.score(test_x).score
                score_s = time.perf_counter() - started
                metrics = detection_metrics(scores, truth)
                results.append(
                    {
                        "dataset": name,
                        "text_prep": _prep(prep),
                        "recommended_prep": variant == 0,
                        "detector": detector_name,
                        **{k: _round(v) for k, v in metrics.items() if k != "counts"},
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
        "splits": {
            "emotion": "train split joy/sadness/anger -> test split (fear/love/surprise anomalous)",
            "bgl": "normal lines of lines 1-1000 -> lines 1001-2000 (alert tag anomalous)",
            "sms": "ham shuffled with default_rng(0), 80 % train -> 20 % ham + all spam",
        },
        "results": results,
    }


def _is_int8(embedder_dir: Path) -> bool:
    manifest = json.loads((embedder_dir / "embedder.json").read_text(encoding="utf-8"))
    return bool(manifest.get("int8") or manifest.get("quantization") == "int8" or "int8" in embedder_dir.name)


def int8_beside_fp32(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench with the fp32 and the int8 export, and the AUROC each cell loses with int8."""
    fp32 = run(args, cached_export())
    int8 = run(args, cached_export(int8=True))

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["dataset"], json.dumps(r["text_prep"], sort_keys=True), r["detector"]

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
                "recommended_prep": r.get("recommended_prep"),
                "detector": r["detector"],
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
    prep = "+".join(r["text_prep"]["fields"]) + (" masked" if r["text_prep"]["mask"] else "")
    metrics = f"AUROC {r['auroc']} AP {r['average_precision']} F1 {r['f1']}"
    return f"{r['dataset']:8s} {prep:32s} {r['detector']:15s} {metrics}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=_csv, default=list(devdata.DATASET_NAMES))
    parser.add_argument("--detectors", type=_csv, default=sorted(DETECTORS))
    parser.add_argument("--target-fpr", type=float, default=0.01)
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
