"""OnnxEmbedder on the real exported all-MiniLM-L6-v2: shapes, normalization, order, truncation, refusal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import emotion_texts, log_messages, mixed_texts

from agent.model.embedder import Embedder, EmbedderError, OnnxEmbedder

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_shape_dtype_and_unit_norm_on_real_texts(embedder: OnnxEmbedder, datasets_dir: Path) -> None:
    texts = mixed_texts(datasets_dir, per_source=20)
    vectors = embedder.embed(texts)
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    assert vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Different texts give different vectors (nothing collapsed to a constant).
    assert len({v.tobytes() for v in vectors}) == len(set(texts))


def test_empty_batch_is_zero_rows(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_order_preserved_with_length_sorted_micro_batches(embedder_dir: Path, datasets_dir: Path) -> None:
    # Mixed lengths in one call, micro-batches of 4: sorting by length must not reorder the output,
    # and padding to the micro-batch's longest text must not change any vector.
    texts = mixed_texts(datasets_dir, per_source=6)
    small_batches = OnnxEmbedder(embedder_dir, intra_op_threads=1, batch_size=4)
    together = small_batches.embed(texts)
    one_by_one = np.vstack([small_batches.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=2e-6)
    reversed_call = small_batches.embed(texts[::-1])
    np.testing.assert_allclose(reversed_call[::-1], together, atol=2e-6)


def test_long_text_is_truncated_to_max_seq_length(embedder: OnnxEmbedder, datasets_dir: Path) -> None:
    long_text = " ".join(emotion_texts(datasets_dir, 60))  # well over 256 tokens
    assert embedder.max_seq_length == 256
    a, b, short_a, short_b = embedder.embed(
        [
            long_text + " the server crashed",
            long_text + " what a lovely day",
            "the server crashed",
            "what a lovely day",
        ]
    )
    # Everything past token 256 is cut, so different tails give the same vector ...
    np.testing.assert_allclose(a, b, atol=1e-6)
    # ... while the same tails on a short text do change it.
    assert float(short_a @ short_b) < 0.9


def test_thread_settings_and_concurrent_calls_agree(embedder_dir: Path, datasets_dir: Path) -> None:
    texts = log_messages(datasets_dir, "thunderbird_2k", 24) + emotion_texts(datasets_dir, 24)
    one = OnnxEmbedder(embedder_dir, intra_op_threads=1, batch_size=16)
    two = OnnxEmbedder(embedder_dir, intra_op_threads=2, batch_size=16)
    expected = one.embed(texts)
    np.testing.assert_allclose(two.embed(texts), expected, atol=2e-6)
    halves = [texts[:24], texts[24:]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one.embed, halves))
    np.testing.assert_allclose(np.vstack(results), expected, atol=2e-6)


def test_non_string_input_is_refused(embedder: OnnxEmbedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.embed(["fine", 42])  # type: ignore[list-item]


def test_token_budget_bounds_every_model_run_without_changing_vectors(
    embedder_dir: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget is what bounds the daemon's resident set (onnxruntime keeps its largest run's
    # memory): every run must fit texts x longest text <= budget, or hold a single text.
    texts = mixed_texts(datasets_dir, per_source=8)
    unbounded = OnnxEmbedder(embedder_dir, intra_op_threads=1, batch_size=64, max_batch_tokens=10**9)
    budgeted = OnnxEmbedder(embedder_dir, intra_op_threads=1, batch_size=64, max_batch_tokens=96)
    runs: list[tuple[int, int]] = []
    original_run = budgeted._run

    def recording_run(batch: list[Any]) -> Any:
        runs.append((len(batch), max(len(e.ids) for e in batch)))
        return original_run(batch)

    monkeypatch.setattr(budgeted, "_run", recording_run)
    np.testing.assert_allclose(budgeted.embed(texts), unbounded.embed(texts), atol=2e-6)
    assert sum(n for n, _ in runs) == len(texts)
    assert all(n * longest <= 96 or n == 1 for n, longest in runs), runs
    assert any(n > 1 for n, _ in runs), "the budget should still batch short texts together"


def test_invalid_arguments_are_refused(embedder_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        OnnxEmbedder(embedder_dir, batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        OnnxEmbedder(embedder_dir, max_batch_tokens=0)
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxEmbedder(embedder_dir, intra_op_threads=-1)


def _copy_embedder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "model.onnx").symlink_to(src / "model.onnx")  # 90 MB: link, not copy
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    shutil.copy(src / "embedder.json", dst / "embedder.json")
    return dst


def test_directory_missing_a_file_is_refused(embedder_dir: Path, tmp_path: Path) -> None:
    broken = _copy_embedder(embedder_dir, tmp_path / "emb")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(EmbedderError, match=r"lacks tokenizer\.json"):
        OnnxEmbedder(broken)
    with pytest.raises(EmbedderError, match="does not exist"):
        OnnxEmbedder(tmp_path / "nowhere")


def test_tampered_tokenizer_is_refused(embedder_dir: Path, tmp_path: Path) -> None:
    tampered = _copy_embedder(embedder_dir, tmp_path / "emb")
    config = json.loads((tampered / "tokenizer.json").read_text(encoding="utf-8"))
    config["truncation"]["max_length"] = 8
    (tampered / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(EmbedderError, match=r"tokenizer\.json does not match the sha256"):
        OnnxEmbedder(tampered)


def test_manifest_without_required_keys_is_refused(embedder_dir: Path, tmp_path: Path) -> None:
    broken = _copy_embedder(embedder_dir, tmp_path / "emb")
    manifest = json.loads((broken / "embedder.json").read_text(encoding="utf-8"))
    del manifest["dim"]
    (broken / "embedder.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(EmbedderError, match="lacks dim"):
        OnnxEmbedder(broken)


def test_runtime_never_imports_torch(embedder_dir: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.model.embedder import OnnxEmbedder\n"
        f"v = OnnxEmbedder(Path({str(embedder_dir)!r}), intra_op_threads=1).embed(['kernel panic'])\n"
        "assert v.shape == (1, 384)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
