"""The ONNX export against sentence-transformers itself, the int8 variant against fp32, and the CLI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import log_messages, mixed_texts

from agent.cli import main
from agent.model.embedder import OnnxEmbedder
from training.export import ExportError, cached_export, cmd_export_embedder, default_model_dir, model_sha256


@pytest.mark.slow
def test_fp32_onnx_matches_sentence_transformers(embedder: OnnxEmbedder, datasets_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = mixed_texts(datasets_dir, per_source=30)
    assert len(texts) >= 100
    reference = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(texts, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)
    got = embedder.embed(texts)
    cosine = np.sum(got * expected, axis=1)
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert float(cosine.min()) >= 0.9999


@pytest.mark.slow
def test_int8_stays_close_to_fp32(
    embedder: OnnxEmbedder, int8_embedder_dir: Path, datasets_dir: Path
) -> None:
    texts = mixed_texts(datasets_dir, per_source=80) + log_messages(datasets_dir, "thunderbird_2k", 60)
    assert len(texts) >= 300
    int8 = OnnxEmbedder(int8_embedder_dir, intra_op_threads=1)
    cosine = np.sum(int8.embed(texts) * embedder.embed(texts), axis=1)
    assert float(cosine.mean()) >= 0.99
    # Per-channel weights: int8 is about a quarter of the fp32 file.
    assert (int8_embedder_dir / "model.onnx").stat().st_size < 0.3 * (
        embedder.model_dir / "model.onnx"
    ).stat().st_size


def test_embedder_json_describes_the_export(embedder_dir: Path, int8_embedder_dir: Path) -> None:
    fp32 = json.loads((embedder_dir / "embedder.json").read_text(encoding="utf-8"))
    int8 = json.loads((int8_embedder_dir / "embedder.json").read_text(encoding="utf-8"))
    assert fp32["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert fp32["source_sha256"] == model_sha256(default_model_dir()) == int8["source_sha256"]
    assert (fp32["max_seq_length"], fp32["pooling"], fp32["normalize"], fp32["dim"]) == (
        256,
        "mean",
        True,
        384,
    )
    assert fp32["quantization"] is None
    assert int8["quantization"] == {
        "method": "dynamic",
        "weight_type": "QInt8",
        "per_channel": True,
        "reduce_range": False,
    }
    assert fp32["opset"] == 17


def test_exported_tokenizer_pads_dynamically_and_truncates_at_256(embedder_dir: Path) -> None:
    # The packaged tokenizer.json pads/truncates everything to 128; the export must not.
    shipped = json.loads((default_model_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    exported = json.loads((embedder_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert shipped["padding"]["strategy"] == {"Fixed": 128}
    assert exported["padding"]["strategy"] == "BatchLongest"
    assert exported["truncation"]["max_length"] == 256


def test_cached_export_reuses_the_existing_directory(embedder_dir: Path) -> None:
    before = (embedder_dir / "model.onnx").stat().st_mtime_ns
    assert cached_export() == embedder_dir
    assert (embedder_dir / "model.onnx").stat().st_mtime_ns == before
    assert cached_export(int8=True) != embedder_dir


@pytest.mark.slow
def test_cached_export_replaces_a_damaged_cache_entry(embedder_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cached_export(cache_root=cache)
    assert first.parent == cache / "onnx"
    assert first.name == embedder_dir.name  # same key as the session's cache: same model, options, tools
    (first / "tokenizer.json").write_text("{}", encoding="utf-8")
    again = cached_export(cache_root=cache)
    assert again == first
    assert OnnxEmbedder(again, intra_op_threads=1).embed(["disk full on /var"]).shape == (1, 384)


def test_export_refuses_a_directory_that_is_not_a_sentence_transformer(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ExportError, match=r"no modules\.json"):
        cached_export(tmp_path, cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cli_bad_model_dir_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(model=tmp_path / "missing", out=tmp_path / "out", int8=False)
    assert cmd_export_embedder(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_overwrite_an_unrelated_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["export-embedder", "--out", str(out)]) == 2
    assert "not an exported embedder" in capsys.readouterr().err
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.slow
def test_cli_export_writes_a_loadable_embedder_identical_to_the_cached_one(
    tmp_path: Path, embedder: OnnxEmbedder, datasets_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "embedder"
    assert main(["export-embedder", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dim"] == 384
    assert sorted(p.name for p in out.iterdir()) == ["embedder.json", "model.onnx", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary export left behind"
    assert os.stat(out).st_mode & 0o055 == 0o055, "export directory must be readable by the agent's user"
    texts = log_messages(datasets_dir, "hdfs_2k", 20)
    np.testing.assert_allclose(
        OnnxEmbedder(out, intra_op_threads=1).embed(texts), embedder.embed(texts), atol=1e-6
    )
