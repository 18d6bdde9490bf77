"""Could ``train`` pick the detector without labels? Validation normals vs synthetic anomalies.

For each dev set (training normals only, the masking ``train`` would choose): 20 % of the
training normals are held back (seed 1); every candidate of ``bench/quality.py`` is fitted on the
rest and scores the held-back normals against three kinds of synthetic anomaly made from training
data alone — ``shuffled`` (a held-back text's words in random order), ``spliced`` (the first half
of one text's words + the second half of another's), ``foreign`` (messages of the demo's shipped
sample, deploy/demo/train.jsonl). The AUROC per kind and their mean are the label-free criteria; a
criterion's pick is compared with the real test AUROC from a ``bench/quality.py`` JSON.

    .venv/bin/python bench/auto_choice.py --quality quality.json > auto.json

Prints one JSON object: per set and candidate the criteria and the real AUROC; per criterion the
pick on each set and its worst-case gap to the best real AUROC.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import VARIANTS, embed_cached, prepared  # noqa: E402

from agent.model.cache import default_cache_root  # noqa: E402
from agent.model.detectors import create_detector  # noqa: E402
from agent.model.detectors.calibration import holdout_split  # noqa: E402
from agent.model.embedder import OnnxEmbedder  # noqa: E402
from agent.model.textprep import TextPreparation  # noqa: E402
from training import devdata  # noqa: E402
from training.export import cached_export  # noqa: E402
from training.masking import decide_mask  # noqa: E402

CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fused", "fused", {}),
    *((name, "fused", params) for name, params in VARIANTS),
    ("knn", "knn", {}),
    ("kmeans", "kmeans", {}),
    ("mahalanobis", "mahalanobis", {}),
)
CRITERIA = ("shuffled", "spliced", "foreign", "mean")
SYNTHETIC = 600


def synthetic(
    train: list[str], fit_idx: npt.NDArray[np.int64], held: list[str], foreign: list[str]
) -> dict[str, list[str]]:
    """The three kinds of synthetic anomaly, seeded."""
    rng = np.random.default_rng(0)
    n = min(SYNTHETIC, len(held))
    words = [held[i].split() for i in rng.choice(len(held), n, replace=False)]
    others = [train[i].split() for i in rng.choice(fit_idx, n)]
    return {
        "shuffled": [" ".join(rng.permutation(w)) for w in words if len(w) >= 3],
        "spliced": [
            " ".join(a[: len(a) // 2] + b[len(b) // 2 :])
            for a, b in zip(words, others, strict=True)
            if len(a) > 1 and len(b) > 1
        ],
        "foreign": [str(t) for t in rng.choice(foreign, min(n, len(foreign)), replace=False)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quality", type=Path, required=True, help="bench/quality.py JSON (the real AUROCs)")
    parser.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    real = json.loads(args.quality.read_text(encoding="utf-8"))["summary"]["candidates"]
    embedder_dir = cached_export()
    embedder = OnnxEmbedder(embedder_dir, intra_op_threads=args.threads)
    cache = default_cache_root() / "quality"
    demo = [json.loads(line)["message"] for line in (REPO / "deploy" / "demo" / "train.jsonl").open()]
    sets: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in devdata.DATASET_NAMES:
        split = devdata.load(name, args.datasets_dir)
        base = TextPreparation(fields=split.text_fields)
        extracted = [base.extract(r) for r in split.train_records]
        prep = replace(base, mask=decide_mask(extracted, base, None).mask)
        train = prepared(prep, split.train_records)
        fit_idx, held_idx = holdout_split(len(train), fraction=0.2, seed=1)
        held = [train[i] for i in held_idx]
        fakes = synthetic(train, fit_idx, held, [prep.prepare(t) for t in demo])
        vectors = embed_cached(embedder, embedder_dir, train, cache)
        fake_vectors = {k: embed_cached(embedder, embedder_dir, v, cache) for k, v in fakes.items()}
        sets[name] = {}
        for candidate, detector_name, params in CANDIDATES:
            detector = create_detector(detector_name, **params)
            detector.fit(vectors[fit_idx], texts=[train[i] for i in fit_idx])
            normal = detector.score(vectors[held_idx], held).score
            row: dict[str, float | None] = {}
            for kind, texts in fakes.items():
                fake = detector.score(fake_vectors[kind], texts).score
                truth = np.r_[np.zeros(len(normal)), np.ones(len(fake))]
                row[kind] = round(float(roc_auc_score(truth, np.r_[normal, fake])), 4)
            row["mean"] = round(float(np.mean([row[k] for k in fakes])), 4)
            row["real"] = real.get(candidate, {}).get("auroc", {}).get(name)
            sets[name][candidate] = row
            print(name, candidate, row, file=sys.stderr, flush=True)
    picks: dict[str, Any] = {}
    for criterion in CRITERIA:
        chosen = {
            n: max(rows, key=lambda c, rows=rows: rows[c][criterion] or 0.0)  # type: ignore[misc]
            for n, rows in sets.items()
        }
        gaps = {
            n: round(max(r["real"] or 0.0 for r in sets[n].values()) - (sets[n][c]["real"] or 0.0), 4)
            for n, c in chosen.items()
        }
        picks[criterion] = {"pick": chosen, "gap_to_best": gaps, "worst_gap": max(gaps.values())}
    print(json.dumps({"sets": sets, "criteria": picks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
