"""The evaluation report: plots a person reads to judge a bundle, tied together by index.html.

Written by ``anomaly-agent evaluate --report DIR``:

``report.json``
    the metrics ``evaluate`` printed.
``projection.png``
    2-D PCA (fitted on the bundle's training sample): left the training sample, right the
    evaluated records (normal / anomalous by ground truth) with flagged ones circled in red, on the
    same axes; cluster centres as black stars (the detector's ``centers`` where it has them, else
    the training-sample mean per cluster where there are two or more clusters).
    PCA rather than t-SNE: deterministic, fast, and distances along the axes stay comparable.
``score_histogram.png``
    scores of normal vs anomalous records with the threshold (score = 1) marked.
``outliers_vs_threshold.png``
    how many records would be flagged (and how many of them wrongly) if the threshold were
    scaled by a factor: the trade-off behind ``--target-fpr``.
``roc.png``, ``pr.png``
    ROC and precision-recall curves with the operating point of the bundle's threshold.

matplotlib runs with the Agg backend (no display needed); it is a training-side dependency.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from agent.model.bundle import Bundle
from agent.model.detectors.base import FloatArray, Scores

BoolArray = npt.NDArray[np.bool_]
_NORMAL = "#1f77b4"
_ANOMALOUS = "#ff7f0e"
_PLOTS = (
    ("projection.png", "Training and evaluated records in 2-D (PCA)"),
    ("score_histogram.png", "Score distribution, normal vs anomalous"),
    ("outliers_vs_threshold.png", "Flagged records vs threshold"),
    ("roc.png", "ROC curve"),
    ("pr.png", "Precision-recall curve"),
)


def _centres(bundle: Bundle, sample: FloatArray | None) -> tuple[FloatArray, str] | None:
    """The detector's ``centers`` if it exposes them (k-means), else per-cluster means of the
    training sample where the detector assigns two or more clusters (classes) from vectors alone;
    else None."""
    centres = getattr(bundle.detector, "centers", None)
    if centres is not None:
        array = np.asarray(centres, dtype=np.float32)
        if array.ndim == 2 and len(array):
            return array, f"cluster centres ({len(array)})"
    if sample is None or not len(sample) or bundle.detector.uses_texts:
        return None  # the training sample keeps vectors only; a text-aware detector cannot score them
    cluster = bundle.detector.score(sample).cluster
    ids = sorted(int(c) for c in set(cluster.tolist()) if c >= 0)
    if len(ids) < 2:
        return None
    means = np.stack([sample[cluster == c].mean(axis=0) for c in ids]).astype(np.float32)
    return means, f"cluster means of the training sample ({len(ids)})"


def _projection(
    path: Path, bundle: Bundle, vectors: FloatArray, scores: Scores, anomalous: BoolArray
) -> None:
    """Left: the training sample and centres; right: evaluated records, same axes, flagged circled."""
    from sklearn.decomposition import PCA

    sample = bundle.training_sample()
    basis = sample if sample is not None and len(sample) >= 2 else vectors
    pca = PCA(n_components=2, random_state=0).fit(basis)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), sharex=True, sharey=True)
    centres = _centres(bundle, sample)
    if sample is not None and len(sample):
        p = pca.transform(sample)
        left.scatter(p[:, 0], p[:, 1], s=10, c="#777777", alpha=0.6, label=f"training sample ({len(sample)})")
    else:
        left.text(0.5, 0.5, "bundle holds no training sample", ha="center", transform=left.transAxes)
    t = pca.transform(vectors)
    for mask, colour, name in ((~anomalous, _NORMAL, "normal"), (anomalous, _ANOMALOUS, "anomalous")):
        if mask.any():
            right.scatter(
                t[mask, 0], t[mask, 1], s=12, c=colour, alpha=0.75, label=f"{name} ({int(mask.sum())})"
            )
    flagged = scores.score > 1.0
    if flagged.any():
        right.scatter(
            t[flagged, 0],
            t[flagged, 1],
            s=60,
            facecolors="none",
            edgecolors="red",
            linewidths=1.0,
            label=f"flagged, score > 1 ({int(flagged.sum())})",
        )
    if centres is not None:
        c = pca.transform(centres[0])
        for ax in (left, right):
            ax.scatter(c[:, 0], c[:, 1], s=160, marker="*", c="black", label=centres[1])
    ratio = pca.explained_variance_ratio_
    for ax, title in ((left, "training data"), (right, "evaluated records (colour = ground truth)")):
        ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of training variance)")
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
    left.set_ylabel(f"PC 2 ({ratio[1]:.0%} of training variance)")
    fig.suptitle(f"{bundle.model_id}: embeddings projected to 2-D (PCA fitted on the training sample)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histogram(path: Path, scores: Scores, anomalous: BoolArray) -> None:
    s = scores.score
    upper = max(float(np.quantile(s, 0.995)), 1.5)
    bins = np.linspace(0.0, upper, 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for mask, colour, name in ((~anomalous, _NORMAL, "normal"), (anomalous, _ANOMALOUS, "anomalous")):
        if mask.any():
            ax.hist(
                np.clip(s[mask], 0, upper),
                bins=bins.tolist(),
                alpha=0.6,
                color=colour,
                label=f"{name} ({int(mask.sum())})",
            )
    ax.axvline(1.0, color="red", linestyle="--", label="threshold (score = 1)")
    ax.set_yscale("log")
    ax.set_xlabel(f"score (distance / calibrated threshold; clipped at {upper:.2f})")
    ax.set_ylabel("records (log scale)")
    ax.set_title("Score distribution")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _outliers_vs_threshold(path: Path, scores: Scores, anomalous: BoolArray) -> None:
    factors = np.linspace(0.25, 3.0, 111)
    s = scores.score
    flagged = np.array([(s > f).sum() for f in factors])
    false = np.array([((s > f) & ~anomalous).sum() for f in factors])
    caught = np.array([((s > f) & anomalous).sum() for f in factors])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(factors, flagged, color="black", label="flagged")
    ax.plot(factors, caught, color=_ANOMALOUS, label=f"flagged anomalous (of {int(anomalous.sum())})")
    ax.plot(
        factors, false, color=_NORMAL, label=f"flagged normal = false alarms (of {int((~anomalous).sum())})"
    )
    ax.axvline(1.0, color="red", linestyle="--", label="bundle threshold")
    ax.set_xlabel("threshold as a multiple of the calibrated one (flag if score > x)")
    ax.set_ylabel("records")
    ax.set_title("Number of outliers vs threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(out: Path, scores: Scores, anomalous: BoolArray, metrics: dict[str, Any]) -> list[str]:
    """ROC and PR plots; skipped (with a note) when only one class is present."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if anomalous.all() or not anomalous.any():
        for stale in ("roc.png", "pr.png"):
            (out / stale).unlink(missing_ok=True)
        return ["roc.png", "pr.png"]
    s = scores.score
    point_fpr = metrics["false_positive_rate"]
    point_recall = metrics["recall"]
    fpr, tpr, _ = roc_curve(anomalous, s)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(fpr, tpr, label=f"AUROC {metrics['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":")
    ax.scatter([point_fpr], [point_recall], color="red", zorder=3, label="bundle threshold")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (recall)")
    ax.set_title("ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    precision, recall, _ = precision_recall_curve(anomalous, s)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(recall, precision, label=f"average precision {metrics['average_precision']:.3f}")
    ax.axhline(anomalous.mean(), color="#999999", linestyle=":", label="share of anomalies")
    if metrics["precision"] is not None:
        ax.scatter([point_recall], [metrics["precision"]], color="red", zorder=3, label="bundle threshold")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr.png", dpi=110)
    plt.close(fig)
    return []


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _index_html(out: Path, metrics: dict[str, Any], skipped: list[str]) -> None:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(metrics[k]))}</td></tr>"
        for k in ("auroc", "average_precision", "precision", "recall", "f1", "false_positive_rate")
    )
    counts = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in metrics["counts"].items())
    labels = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{'normal' if info['normal'] else 'anomaly'}</td>"
        f"<td>{info['n']}</td><td>{info['flagged']}</td><td>{info['flagged_share']:.1%}</td></tr>"
        for label, info in metrics["per_label"].items()
    )
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title in _PLOTS
        if name not in skipped
    )
    note = (
        f"<p>Not drawn ({html.escape(', '.join(skipped))}): the data holds only one class.</p>"
        if skipped
        else ""
    )
    title = f"Evaluation of {metrics['model_id']}"
    esc = {k: html.escape(str(metrics[k])) for k in ("bundle", "detector", "sha256", "input")}
    normal = html.escape(", ".join(metrics["normal_labels"]))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}img{{max-width:100%}}
figure{{margin:1.5em 0}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Bundle <code>{esc["bundle"]}</code> (detector {esc["detector"]},
manifest sha256 <code>{esc["sha256"]}</code>), evaluated on <code>{esc["input"]}</code>;
normal labels: {normal}.
A record is flagged when its score exceeds 1.0 (its distance is beyond the calibrated threshold).</p>
<h2>Quality</h2><table>{rows}</table>
<h2>Counts</h2><table>{counts}</table>
<h2>Per label</h2><table>
<tr><th>label</th><th>counts as</th><th>records</th><th>flagged</th><th>share</th></tr>
{labels}</table>
<h2>Plots</h2>{note}{figures}
<p>All numbers: <a href="report.json">report.json</a>.</p>
</body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")


def write_report(
    out: Path,
    bundle: Bundle,
    vectors: FloatArray,
    scores: Scores,
    anomalous: BoolArray,
    metrics: dict[str, Any],
) -> Path:
    """Write report.json, the plots and index.html into ``out`` (created if needed); return index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anomalous = np.asarray(anomalous, dtype=bool)
    _projection(out / "projection.png", bundle, vectors, scores, anomalous)
    _histogram(out / "score_histogram.png", scores, anomalous)
    _outliers_vs_threshold(out / "outliers_vs_threshold.png", scores, anomalous)
    skipped = _curves(out, scores, anomalous, metrics)
    (out / "report.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _index_html(out, metrics, skipped)
    return out / "index.html"
