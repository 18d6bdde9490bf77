"""Embedding throughput and accuracy of the exported MiniLM: fp32 vs int8, 1 vs 2 intra-op threads.

Prints one JSON object. All configurations run side by side in one process and are interleaved
per repetition (so a noisy neighbour hits all of them alike); figures are medians of events/s over
the repetitions, and ratios (int8/fp32, 2 threads/1 thread) are computed from those medians.
``median_events_per_cpu_s`` divides by the process's CPU time instead of wall time: on a shared
machine it shows the cost per event independent of how much of a core the neighbours left us
(for one thread it approximates the throughput of one uncontended core).

Workloads (real dev data, ../shared/datasets):
- ``log_lines``: raw BGL / Thunderbird / HDFS lines, round-robin, as they would arrive on a topic.
- ``medium``: SMS messages and tweets concatenated to ~128 tokens each.

Accuracy, on a mix of log lines, tweets, SMS and long texts: fp32 ONNX vs sentence-transformers
(max abs diff, min/mean cosine) and int8 vs fp32 (mean/min cosine).

    .venv/bin/python bench/embed.py [--log-events 256] [--medium-events 96] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from agent.model.embedder import OnnxEmbedder  # noqa: E402
from training.export import cached_export, default_model_dir  # noqa: E402

LOG_FILES = ("bgl_2k/BGL_2k.log", "thunderbird_2k/Thunderbird_2k.log", "hdfs_2k/HDFS_2k.log")


def log_lines(datasets: Path, n: int) -> list[str]:
    sources = [
        [
            line
            for line in (datasets / name).read_text(encoding="utf-8", errors="replace").splitlines()
            if line
        ]
        for name in LOG_FILES
    ]
    # Round-robin over the three logs, stepping 7 lines at a time so repeats of one template thin out.
    return [sources[i % 3][(i // 3) * 7 % len(sources[i % 3])] for i in range(n)]


def short_texts(datasets: Path) -> list[str]:
    sms = (datasets / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8", errors="replace")
    tweets = (datasets / "emotion" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    sms_rows = [row.split("\t", 1)[1] for row in sms.splitlines()[1:]]
    texts: list[str] = []
    for a, b in zip(sms_rows, tweets, strict=False):
        texts += [a, str(json.loads(b)["text"])]
    return texts


def medium_texts(datasets: Path, n: int, tokenizer: Tokenizer, target_tokens: int = 128) -> list[str]:
    """Concatenate SMS/tweets until each text reaches ``target_tokens`` tokens."""
    pieces = iter(short_texts(datasets))
    out: list[str] = []
    while len(out) < n:
        text = next(pieces)
        while len(tokenizer.encode(text).ids) < target_tokens:
            text = f"{text} {next(pieces)}"
        out.append(text)
    return out


def mixed_texts(datasets: Path, n: int) -> list[str]:
    shorts = short_texts(datasets)
    long_texts = [" ".join(shorts[i : i + 30]) for i in range(0, 30 * 5, 30)]
    return log_lines(datasets, n // 2) + shorts[: n - n // 2 - len(long_texts)] + long_texts


def mean_tokens(tokenizer: Tokenizer, texts: list[str]) -> float:
    return float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)]))


def cosine_rows(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray(np.sum(a * b, axis=1), dtype=np.float32)  # rows are unit-normalized


def throughput(
    dirs: dict[str, Path], workloads: dict[str, list[str]], threads: list[int], batch_size: int, repeats: int
) -> dict[str, Any]:
    embedders = {
        (variant, t): OnnxEmbedder(path, intra_op_threads=t, batch_size=batch_size)
        for variant, path in dirs.items()
        for t in threads
    }
    samples: dict[tuple[str, str, int], list[float]] = {}
    cpu_samples: dict[tuple[str, str, int], list[float]] = {}
    for (variant, t), embedder in embedders.items():
        for workload, texts in workloads.items():
            embedder.embed(texts[: batch_size * 2])  # warm-up: allocations, thread pool
            samples[(workload, variant, t)] = []
            cpu_samples[(workload, variant, t)] = []
    for _ in range(repeats):
        for (variant, t), embedder in embedders.items():
            for workload, texts in workloads.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                embedder.embed(texts)
                samples[(workload, variant, t)].append(len(texts) / (time.perf_counter() - start))
                cpu_samples[(workload, variant, t)].append(len(texts) / (time.process_time() - cpu_start))
    result: dict[str, Any] = {}
    for workload in workloads:
        rows: dict[str, Any] = {}
        for variant in dirs:
            for t in threads:
                values = samples[(workload, variant, t)]
                rows[f"{variant}_threads{t}"] = {
                    "median_events_per_s": round(statistics.median(values), 1),
                    "min": round(min(values), 1),
                    "max": round(max(values), 1),
                    "median_events_per_cpu_s": round(
                        statistics.median(cpu_samples[(workload, variant, t)]), 1
                    ),
                }
        ratios = {}
        for t in threads:
            if "int8" in dirs and "fp32" in dirs:
                ratios[f"int8_over_fp32_threads{t}"] = round(
                    rows[f"int8_threads{t}"]["median_events_per_s"]
                    / rows[f"fp32_threads{t}"]["median_events_per_s"],
                    2,
                )
        if len(threads) > 1:
            for variant in dirs:
                ratios[f"{variant}_threads{threads[-1]}_over_threads{threads[0]}"] = round(
                    rows[f"{variant}_threads{threads[-1]}"]["median_events_per_s"]
                    / rows[f"{variant}_threads{threads[0]}"]["median_events_per_s"],
                    2,
                )
        result[workload] = {"events_per_s": rows, "ratios": ratios}
    return result


def parity(fp32: OnnxEmbedder, int8: OnnxEmbedder, texts: list[str]) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(texts, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)
    got = fp32.embed(texts)
    quantized = int8.embed(texts)
    cos_st = cosine_rows(got, expected)
    cos_q = cosine_rows(quantized, got)
    return {
        "texts": len(texts),
        "fp32_vs_sentence_transformers": {
            "max_abs_diff": float(np.abs(got - expected).max()),
            "min_cosine": float(cos_st.min()),
            "mean_cosine": float(cos_st.mean()),
        },
        "int8_vs_fp32": {"mean_cosine": float(cos_q.mean()), "min_cosine": float(cos_q.min())},
    }


def machine() -> dict[str, Any]:
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "onnxruntime": metadata.version("onnxruntime"),
        "tokenizers": metadata.version("tokenizers"),
        "numpy": metadata.version("numpy"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO_ROOT.parent / "shared" / "datasets")
    parser.add_argument("--log-events", type=int, default=256, help="log lines per timed call")
    parser.add_argument("--medium-events", type=int, default=96, help="~128-token texts per timed call")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls per configuration (median reported)"
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--batch-size", type=int, default=32, help="OnnxEmbedder micro-batch size")
    parser.add_argument(
        "--parity-texts", type=int, default=200, help="texts for the accuracy figures (0: skip)"
    )
    parser.add_argument("--cache-root", type=Path, default=None, help="export cache (default: the agent's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    threads = [int(t) for t in args.threads.split(",")]
    dirs = {
        "fp32": cached_export(cache_root=args.cache_root),
        "int8": cached_export(int8=True, cache_root=args.cache_root),
    }
    fp32 = OnnxEmbedder(dirs["fp32"], intra_op_threads=max(threads), batch_size=args.batch_size)
    int8 = OnnxEmbedder(dirs["int8"], intra_op_threads=max(threads), batch_size=args.batch_size)
    tokenizer = Tokenizer.from_file(str(dirs["fp32"] / "tokenizer.json"))
    tokenizer.no_padding()  # count real tokens (truncation at 256 stays on)
    workloads = {
        "log_lines": log_lines(args.datasets, args.log_events),
        "medium": medium_texts(args.datasets, args.medium_events, tokenizer),
    }
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "embed",
        "machine": machine(),
        "settings": {"repeats": args.repeats, "batch_size": args.batch_size, "threads": threads},
        "workloads": {
            name: {"events": len(texts), "mean_tokens": round(mean_tokens(tokenizer, texts), 1)}
            for name, texts in workloads.items()
        },
        "throughput": throughput(dirs, workloads, threads, args.batch_size, args.repeats),
    }
    report["machine"]["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    if args.parity_texts > 0:
        report["parity"] = parity(fp32, int8, mixed_texts(args.datasets, args.parity_texts))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
