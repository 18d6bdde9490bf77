"""Session fixtures for the real embedder (all-MiniLM-L6-v2 from the PyPI package, exported to ONNX).

Exports go through :func:`training.export.cached_export` into the machine's cache root
(``agent.model.cache.default_cache_root()``), keyed by model hash, options and tool versions: the first
session on a machine pays ~20 s per variant, later sessions and parallel workers reuse the files.
Also: small readers for real dev texts (log lines, tweets, SMS) that the embedder tests share.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.model.embedder import OnnxEmbedder
from training.export import cached_export

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log_messages(datasets_dir: Path, name: str, limit: int) -> list[str]:
    """Lines of a loghub sample (``bgl_2k``, ``thunderbird_2k``, ``hdfs_2k``), spread over the file."""
    path = next((datasets_dir / name).glob("*.log"))
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    step = max(1, len(lines) // limit)
    return lines[::step][:limit]


def emotion_texts(datasets_dir: Path, limit: int, split: str = "validation") -> list[str]:
    rows = (datasets_dir / "emotion" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [str(json.loads(row)["text"]) for row in rows[:limit]]


def sms_texts(datasets_dir: Path, limit: int) -> list[str]:
    rows = (datasets_dir / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8", errors="replace")
    return [row.split("\t", 1)[1] for row in rows.splitlines()[1 : limit + 1]]


def mixed_texts(datasets_dir: Path, per_source: int) -> list[str]:
    """Log lines, tweets, SMS and a few long texts (concatenated tweets, past the 256-token limit)."""
    tweets = emotion_texts(datasets_dir, per_source * 2)
    long_texts = [" ".join(tweets[i : i + 40]) for i in range(0, min(len(tweets), 5 * 40), 40)]
    return (
        log_messages(datasets_dir, "bgl_2k", per_source)
        + log_messages(datasets_dir, "hdfs_2k", per_source // 2)
        + tweets[:per_source]
        + sms_texts(datasets_dir, per_source)
        + long_texts
    )


@pytest.fixture(scope="session")
def embedder_dir() -> Path:
    """fp32 ONNX export of the packaged all-MiniLM-L6-v2 (cached per machine)."""
    return cached_export()


@pytest.fixture(scope="session")
def int8_embedder_dir() -> Path:
    """Dynamic int8 (per-channel weights) export of the packaged all-MiniLM-L6-v2 (cached per machine)."""
    return cached_export(int8=True)


@pytest.fixture(scope="session")
def embedder(embedder_dir: Path) -> OnnxEmbedder:
    """One fp32 :class:`OnnxEmbedder` for the session, one intra-op thread (the machine is shared)."""
    return OnnxEmbedder(embedder_dir, intra_op_threads=1)
