"""Sentence embeddings at run time: an exported ONNX embedder run with onnxruntime.

Only tokenizers, onnxruntime and numpy are used here; torch/transformers stay on the training side
(``training/export.py`` writes the directory this reads). An embedder directory holds:

- ``model.onnx``: transformer + pooling + L2 normalization in one graph, output
  ``sentence_embedding`` ``(batch, dim)``. Pooling is in the graph so this module cannot pool
  differently from the model; the vectors are still re-normalized here (cheap, and it keeps the
  contract "unit length" true even for a graph exported without normalization).
- ``tokenizer.json``: fast tokenizer, truncation at the model's ``max_seq_length``.
- ``embedder.json``: model id, source hash, max_seq_length, pooling, normalization, dim,
  quantization and sha256 of the two files above, which are checked before anything is loaded.

Throughput and memory choices (see docs/embedder.md for figures): texts are sorted by token count
and cut into micro-batches of at most ``batch_size`` texts and at most ``max_batch_tokens`` padded
tokens (texts x the batch's longest text), each padded only to its own longest text (short log
lines never pay for a long message in the same poll), then put back in input order. The token
budget bounds the model's working memory: attention holds ``batch x heads x length^2`` floats, and
onnxruntime's CPU arena keeps whatever the largest run needed for the life of the process, so
without the budget one poll with a few 256-token lines grows the daemon's resident set by ~800 MB
for good; smaller runs also stay in cache and are faster per text. onnxruntime's intra-op threads
do not spin-wait (``session.intra_op.allow_spinning = 0``), so they leave the core to the
consumer's Python stages between runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

REQUIRED_FILES = ("model.onnx", "tokenizer.json", "embedder.json")
# Padded tokens per model run (texts x longest text). Measured on log lines (docs/embedder.md,
# "Memory"): 1024 gave the lowest peak RSS and the highest throughput of the budgets tried.
DEFAULT_MAX_BATCH_TOKENS = 1024
_MANIFEST_KEYS = ("model_id", "source_sha256", "max_seq_length", "pooling", "normalize", "dim", "output")


class EmbedderError(Exception):
    """The embedder directory is missing, incomplete or tampered with; the message says what to fix."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors, one row per text, in input order.

    ``progress``, when given, is called after each unit of work (each model run of a micro-batch),
    so a caller embedding a large batch can show that it is busy, not stuck (the systemd
    watchdog and ``/healthz`` follow it)."""

    @property
    def dim(self) -> int: ...

    def embed(
        self, texts: Sequence[str], progress: Callable[[], None] | None = None
    ) -> NDArray[np.float32]: ...


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Read and check ``embedder.json`` and the files it names; raise :class:`EmbedderError` if unusable."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EmbedderError(
            f"embedder directory {model_dir} does not exist; run `anomaly-agent export-embedder`"
        )
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise EmbedderError(
            f"embedder directory {model_dir} lacks {', '.join(missing)}; "
            "re-export it with `anomaly-agent export-embedder --out DIR`"
        )
    try:
        manifest = json.loads((model_dir / "embedder.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbedderError(
            f"{model_dir / 'embedder.json'} is not valid JSON ({exc}); re-export the embedder"
        ) from exc
    if not isinstance(manifest, dict):
        raise EmbedderError(f"{model_dir / 'embedder.json'} must hold a JSON object; re-export the embedder")
    absent = [key for key in _MANIFEST_KEYS if key not in manifest]
    if absent:
        raise EmbedderError(
            f"{model_dir / 'embedder.json'} lacks {', '.join(absent)}; re-export the embedder"
        )
    files = manifest.get("files", {})
    for name in ("model.onnx", "tokenizer.json"):
        expected = files.get(name) if isinstance(files, dict) else None
        if expected is None:
            raise EmbedderError(
                f"{model_dir / 'embedder.json'} has no sha256 for {name}; re-export the embedder"
            )
        if _sha256(model_dir / name) != expected:
            raise EmbedderError(
                f"{model_dir / name} does not match the sha256 in embedder.json (modified or truncated); "
                "re-export the embedder"
            )
    return manifest


class OnnxEmbedder:
    """:class:`Embedder` backed by an exported ONNX sentence-transformer.

    ``intra_op_threads`` 0 lets onnxruntime pick (one per physical core); several single-threaded
    consumer processes can beat one process with more threads on short texts. ``batch_size`` is
    the most texts fed to the model per run, ``max_batch_tokens`` the most padded tokens (texts x
    the run's longest text; a single text longer than the budget still runs, alone): it caps the
    model's working memory, which onnxruntime's arena keeps once reached, so the process's peak
    resident set no longer depends on how many long texts one poll happens to bring.
    ``embed`` may be called from several threads
    (onnxruntime sessions and the tokenizer are thread-safe and each call pads only its own
    encodings), but concurrent calls share the intra-op threads; one instance per worker process
    is the intended use.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        intra_op_threads: int = 0,
        batch_size: int = 32,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        self.model_id: str = str(self.manifest["model_id"])
        self.max_seq_length = int(self.manifest["max_seq_length"])
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self._dim = int(self.manifest["dim"])

        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        padding = self._tokenizer.padding or {}
        self._pad_id = int(padding.get("pad_id", 0))
        self._pad_type_id = int(padding.get("pad_type_id", 0))
        self._pad_token = str(padding.get("pad_token", "[PAD]"))
        # Pad per micro-batch below, not per tokenizer call; truncate to what the model was trained for.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise EmbedderError(f"onnxruntime cannot load {self.model_dir / 'model.onnx'}: {exc}") from exc
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise EmbedderError(
                f"{self.model_dir / 'model.onnx'} declares unsupported inputs {sorted(unknown)}"
            )
        self._output = str(self.manifest["output"])
        outputs = [o.name for o in self._session.get_outputs()]
        if self._output not in outputs:
            raise EmbedderError(
                f"{self.model_dir / 'model.onnx'} has no output {self._output!r} (has {outputs})"
            )

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str], progress: Callable[[], None] | None = None) -> NDArray[np.float32]:
        """Embed ``texts``; returns float32 ``(len(texts), dim)``, unit rows, in input order.
        ``progress()`` runs after each micro-batch's model run (at most ``max_batch_tokens``
        padded tokens: tens of milliseconds on log lines)."""
        n = len(texts)
        result = np.zeros((n, self._dim), dtype=np.float32)
        if n == 0:
            return result
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(n), key=lambda i: len(encodings[i].ids))
        for idx in self._micro_batches([len(encodings[i].ids) for i in order], order):
            result[idx] = self._run([encodings[i] for i in idx])
            if progress is not None:
                progress()
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        np.divide(result, norms, out=result, where=norms > 0)
        return result

    def _micro_batches(self, lengths: list[int], order: list[int]) -> list[list[int]]:
        """Cut ``order`` (indices sorted by ascending token count ``lengths``) into runs of at most
        ``batch_size`` texts whose padded size (texts x the last, longest one) fits the token
        budget; a run always takes at least one text."""
        batches: list[list[int]] = []
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self.batch_size
                and (end - start + 1) * lengths[end] <= self.max_batch_tokens
            ):
                end += 1
            batches.append(order[start:end])
            start = end
        return batches

    def _run(self, batch: list[Encoding]) -> NDArray[np.float32]:
        length = max(len(e.ids) for e in batch)
        for e in batch:
            e.pad(length, pad_id=self._pad_id, pad_type_id=self._pad_type_id, pad_token=self._pad_token)
        arrays = {
            "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
        }
        feeds = {name: arrays[name] for name in self._inputs}
        out = self._session.run([self._output], feeds)[0]
        return np.asarray(out, dtype=np.float32)
