"""The model bundle: everything the agent needs to score events, verified before anything is read.

Layout of a bundle directory (see docs/bundle.md)::

    manifest.json             format_version, model_id, created_at, detector, embedder, text
                              preparation, training summary, evaluation, files {path: sha256}
    text_preparation.json     TextPreparation.to_dict()
    embedder/                 copy of the exported ONNX embedder (model.onnx, tokenizer.json, embedder.json)
    detector/                 whatever Detector.save wrote (npy/JSON; a pickle for hdbscan)
    training_sample.npy       optional: a small seeded sample of training vectors for report plots
    known_patterns.npy        optional: sorted uint64 hashes of the training patterns (model/examples.py)
    normal_patterns.npy       optional: the same for patterns operators marked normal (train --feedback-from)
    examples.npy/.jsonl       optional: distinct training patterns (unit vectors float16 + texts)
    rates.json                optional: each training template's rate baseline (train --time-field)
    sessions/                 optional: the session model (train --session-key-pattern/-field; npy + JSON)
    values/                   optional: the value view, per-slot descriptors of what masking replaced

Trust model: ``manifest.json`` lists the sha256 of every other file. ``load_bundle`` checks the
format version, that every listed file exists and matches its hash, and that no unlisted file sits
anywhere in the bundle, **before** it reads any of them — in particular before a detector unpickles
anything, so a swapped or edited pickle is refused rather than executed. The manifest itself is the
model's identity: ``Bundle.sha256`` is the sha256 of manifest.json, and since the manifest pins every
other file's hash, it identifies the complete model in alerts and metrics.

``write_bundle`` builds the bundle in a hidden temporary directory beside ``out`` and renames it into
place (an existing bundle is renamed away first, then removed), so a watcher on ``out`` never sees
half a bundle: it sees the old one, briefly none, then the new one. Watchers of the parent directory
should ignore names starting with a dot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agent.model.detectors.base import Detector, FloatArray
from agent.model.examples import EXAMPLE_TEXTS, EXAMPLE_VECTORS, KNOWN_PATTERNS, Examples, KnownPatterns
from agent.model.sessions import SessionModel
from agent.model.textprep import TextPreparation
from agent.model.values import ValueView

if TYPE_CHECKING:
    from agent.model.embedder import OnnxEmbedder

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NORMAL_PATTERNS = "normal_patterns.npy"
RATE_SEEDS = "rates.json"
SESSIONS_DIR = "sessions"
VALUES_DIR = "values"
TEXT_PREPARATION = "text_preparation.json"
EMBEDDER_DIR = "embedder"
DETECTOR_DIR = "detector"
TRAINING_SAMPLE = "training_sample.npy"
REQUIRED_FILES = (
    TEXT_PREPARATION,
    f"{EMBEDDER_DIR}/model.onnx",
    f"{EMBEDDER_DIR}/tokenizer.json",
    f"{EMBEDDER_DIR}/embedder.json",
)
_FIX = "re-train or restore the bundle"
T = TypeVar("T")


class BundleError(Exception):
    """The bundle is missing, incomplete, tampered with or from an unsupported format; says what to fix."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class Bundle:
    """A verified, loaded bundle. ``sha256`` (of manifest.json) and ``model_id`` identify the model."""

    path: Path
    manifest: dict[str, Any]
    model_id: str
    sha256: str
    text_prep: TextPreparation
    detector: Detector
    embedder_dir: Path
    examples: Examples | None = None
    """The nearest-normal-example index (examples.npy/.jsonl); None for bundles without it
    (trained with ``--no-examples``, or before bundles kept examples)."""
    known_patterns: KnownPatterns | None = None
    """Hashes of the training patterns (known_patterns.npy); None for bundles written without them."""
    normal_patterns: KnownPatterns | None = None
    """Patterns operators marked normal, folded in by ``train --feedback-from``
    (normal_patterns.npy): the agent does not alert them, whatever they score."""
    rate_seeds: dict[str, Any] | None = None
    """Rate baselines of the training templates (rates.json, ``train --time-field``): a known
    pattern's rate needs no warm-up. None for bundles trained without timestamps."""
    sessions: SessionModel | None = None
    """The session model (sessions/, ``train --session-key-pattern``); None without one."""
    values: ValueView | None = None
    """The value view (values/): what each placeholder replaced, scored per event beside the
    pattern; None for bundles without one."""

    @property
    def detector_name(self) -> str:
        return str(self.manifest["detector"]["name"])

    def load_embedder(self, intra_op_threads: int = 0) -> OnnxEmbedder:
        """The bundle's own embedder copy, so scoring uses exactly the model the detector was fitted with."""
        from agent.model.embedder import OnnxEmbedder

        return OnnxEmbedder(self.embedder_dir, intra_op_threads=intra_op_threads)

    def training_sample(self) -> FloatArray | None:
        """The seeded sample of training vectors kept for plots, or None if the bundle has none."""
        if TRAINING_SAMPLE not in self.manifest["files"]:
            return None
        sample: FloatArray = np.load(self.path / TRAINING_SAMPLE, allow_pickle=False)
        return sample


def _fail(bundle: Path, what: str) -> BundleError:
    return BundleError(f"model bundle {bundle}: {what}; {_FIX}")


def _listed_path(bundle: Path, rel: object) -> Path:
    """Resolve a manifest entry, refusing absolute paths, '..' and anything not a plain relative path."""
    if not isinstance(rel, str) or not rel:
        raise _fail(bundle, f"manifest lists an invalid file name {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or str(pure) != rel or rel == MANIFEST:
        raise _fail(bundle, f"manifest lists an invalid file name {rel!r}")
    return bundle / rel


def verify_bundle(path: Path) -> tuple[dict[str, Any], str]:
    """Check a bundle without reading its model files; returns (manifest, sha256 of manifest.json).

    Raises BundleError naming the first problem: missing directory or manifest, unsupported
    format_version, a listed file missing, a symlink, a hash mismatch, or an unlisted file.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"model bundle {path}: no such directory; train one with `anomaly-agent train`")
    if not manifest_path.is_file():
        raise _fail(path, f"{MANIFEST} is missing")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _fail(path, f"{MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"model bundle {path}: format_version {version!r} is not supported"
            f" (this agent reads {FORMAT_VERSION}); re-train the bundle with this version of anomaly-agent"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise _fail(path, f"{MANIFEST} has no 'files' table")
    for required in REQUIRED_FILES:
        if required not in files:
            raise _fail(path, f"{MANIFEST} does not list {required}")
    for rel, expected in files.items():
        file = _listed_path(path, rel)
        if file.is_symlink():
            raise _fail(path, f"{rel} is a symbolic link; bundles hold plain files only")
        if not file.is_file():
            raise _fail(path, f"{rel} is missing")
        if sha256_file(file) != expected:
            raise _fail(path, f"{rel} does not match its sha256 in {MANIFEST} (modified or corrupted)")
    for root, dirs, names in os.walk(path):
        for name in names + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(path).as_posix()
            if rel != MANIFEST and rel not in files:
                raise _fail(path, f"{rel} is not listed in {MANIFEST} (unexpected file; remove it)")
    return manifest, hashlib.sha256(raw).hexdigest()


def load_bundle(path: Path) -> Bundle:
    """Verify (see ``verify_bundle``), then read the text preparation and the detector."""
    from agent.model.detectors import DETECTORS

    path = Path(path)
    manifest, digest = verify_bundle(path)
    try:
        text_prep = TextPreparation.from_dict(
            json.loads((path / TEXT_PREPARATION).read_text(encoding="utf-8"))
        )
    except (ValueError, TypeError) as exc:
        raise _fail(path, f"{TEXT_PREPARATION} is invalid ({exc})") from None
    detector_info = manifest.get("detector")
    name = detector_info.get("name") if isinstance(detector_info, dict) else None
    if not isinstance(name, str) or name not in DETECTORS:
        raise _fail(
            path, f"detector {name!r} is unknown to this agent (known: {', '.join(sorted(DETECTORS))})"
        )
    model_id = manifest.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise _fail(path, f"{MANIFEST} has no model_id")
    try:
        detector = DETECTORS[name].load(path / DETECTOR_DIR)
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(path, f"detector files could not be read ({exc})") from None
    known_patterns, examples = _load_patterns(path, manifest)
    normal_patterns = None
    if NORMAL_PATTERNS in manifest["files"]:
        try:
            normal_patterns = KnownPatterns.load(path / NORMAL_PATTERNS)
        except (OSError, ValueError) as exc:
            raise _fail(path, f"{NORMAL_PATTERNS} is invalid ({exc})") from None
    rate_seeds = None
    if RATE_SEEDS in manifest["files"]:
        try:
            rate_seeds = json.loads((path / RATE_SEEDS).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(path, f"{RATE_SEEDS} is invalid ({exc})") from None
        if not isinstance(rate_seeds, dict) or not isinstance(rate_seeds.get("baselines"), dict):
            raise _fail(path, f"{RATE_SEEDS} is not an object with baselines")
    return Bundle(
        path=path,
        manifest=manifest,
        model_id=model_id,
        sha256=digest,
        text_prep=text_prep,
        detector=detector,
        embedder_dir=path / EMBEDDER_DIR,
        examples=examples,
        known_patterns=known_patterns,
        normal_patterns=normal_patterns,
        rate_seeds=rate_seeds,
        sessions=_load_part(path, manifest, SESSIONS_DIR, SessionModel.load),
        values=_load_part(path, manifest, VALUES_DIR, ValueView.load),
    )


def _load_part(path: Path, manifest: dict[str, Any], directory: str, load: Callable[[Path], T]) -> T | None:
    """An optional model part stored in ``directory`` (verified with the rest), None when the
    manifest lists no file in it."""
    if not any(name.startswith(directory + "/") for name in manifest["files"]):
        return None
    try:
        return load(path / directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(path, f"{directory}/ is invalid ({exc})") from None


def _load_patterns(path: Path, manifest: dict[str, Any]) -> tuple[KnownPatterns | None, Examples | None]:
    """known_patterns.npy and examples.npy/.jsonl where the (verified) manifest lists them."""
    files = manifest["files"]
    known: KnownPatterns | None = None
    if KNOWN_PATTERNS in files:
        try:
            known = KnownPatterns.load(path / KNOWN_PATTERNS)
        except (OSError, ValueError) as exc:
            raise _fail(path, f"{KNOWN_PATTERNS} is invalid ({exc})") from None
    listed = [name for name in (EXAMPLE_VECTORS, EXAMPLE_TEXTS) if name in files]
    if not listed:
        return known, None
    if len(listed) == 1:
        missing = EXAMPLE_TEXTS if listed == [EXAMPLE_VECTORS] else EXAMPLE_VECTORS
        raise _fail(path, f"{MANIFEST} lists {listed[0]} but not {missing}")
    try:
        examples = Examples.load(path)
    except (OSError, ValueError) as exc:
        raise _fail(path, f"{EXAMPLE_VECTORS}/{EXAMPLE_TEXTS} are invalid ({exc})") from None
    embedder = manifest.get("embedder")
    dim = embedder.get("dim") if isinstance(embedder, dict) else None
    if isinstance(dim, int) and examples.dim != dim:
        raise _fail(path, f"{EXAMPLE_VECTORS} has dimension {examples.dim}, the embedder {dim}")
    return known, examples


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_bundle(
    out: Path,
    *,
    embedder_dir: Path,
    text_prep: TextPreparation,
    detector: Detector,
    training_summary: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    detector_params: Mapping[str, Any] | None = None,
    training_sample: FloatArray | None = None,
    known_patterns: KnownPatterns | None = None,
    examples: Examples | None = None,
    normal_patterns: KnownPatterns | None = None,
    rate_seeds: Mapping[str, Any] | None = None,
    sessions: SessionModel | None = None,
    values: ValueView | None = None,
) -> Path:
    """Write a complete bundle to ``out`` atomically (temp dir + rename) and return ``out``.

    ``training_summary``/``evaluation``/``detector_params`` must be JSON-serializable; they are
    recorded in the manifest for people and dashboards. ``training_sample`` (n, dim) is stored as
    ``training_sample.npy`` for report plots, ``known_patterns`` as ``known_patterns.npy`` and
    ``examples`` as ``examples.npy`` + ``examples.jsonl`` (agent/model/examples.py), ``rate_seeds``
    (JSON) as ``rates.json``, ``sessions`` and ``values`` in ``sessions/`` and ``values/``. An
    existing bundle at
    ``out`` is replaced; any other existing file or non-empty directory there is refused
    (BundleError) rather than deleted.
    """
    out = Path(out)
    embedder_dir = Path(embedder_dir)
    embedder_json = embedder_dir / "embedder.json"
    if not embedder_json.is_file():
        raise BundleError(
            f"embedder directory {embedder_dir} has no embedder.json;"
            " export it with `anomaly-agent export-embedder`"
        )
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(
            f"{out} exists and is not a model bundle; refusing to replace it (choose another --out)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # mkdtemp makes the directory private (0700); the agent often runs as another user.
        tmp.chmod(0o777 & ~_current_umask())
        shutil.copytree(embedder_dir, tmp / EMBEDDER_DIR)
        (tmp / DETECTOR_DIR).mkdir()
        for written in detector.save(tmp / DETECTOR_DIR):
            if not Path(written).is_file():
                raise BundleError(
                    f"detector {detector.name} reported {written} as saved, but it is not there"
                )
        (tmp / TEXT_PREPARATION).write_text(
            json.dumps(text_prep.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        if training_sample is not None:
            np.save(tmp / TRAINING_SAMPLE, np.asarray(training_sample, dtype=np.float32), allow_pickle=False)
        if known_patterns is not None:
            known_patterns.save(tmp / KNOWN_PATTERNS)
        if examples is not None:
            examples.save(tmp)
        if normal_patterns is not None:
            normal_patterns.save(tmp / NORMAL_PATTERNS)
        if rate_seeds is not None:
            seeds = json.dumps(rate_seeds, separators=(",", ":"))
            (tmp / RATE_SEEDS).write_text(seeds + "\n", encoding="utf-8")
        if sessions is not None:
            sessions.save(tmp / SESSIONS_DIR)
        if values is not None:
            values.save(tmp / VALUES_DIR)
        files = _hash_tree(tmp)
        identity = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_id": f"{detector.name}-{identity[:12]}",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "detector": {
                "name": detector.name,
                "params": dict(detector_params or {}),
                "cluster_labels": detector.cluster_labels,
            },
            "embedder": json.loads(embedder_json.read_text(encoding="utf-8")),
            "text_preparation": text_prep.to_dict(),
            "training": dict(training_summary),
            "evaluation": dict(evaluation),
            "files": files,
        }
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_into_place(new: Path, out: Path) -> None:
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
