"""Model bundle: round trip, atomic replacement, and refusal of anything tampered before it is read."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import agent.model.detectors
from agent.model.bundle import FORMAT_VERSION, BundleError, load_bundle, write_bundle
from agent.model.detectors.base import Detector, FloatArray, Scores
from agent.model.detectors.hdbscan_detector import HdbscanDetector
from agent.model.examples import Examples, KnownPatterns, Neighbour
from agent.model.textprep import TextPreparation


class PickleDetector(Detector):
    """Nearest-centroid detector persisted as a pickle, like hdbscan's: the case the hashes must guard."""

    name = "test-pickle"

    def __init__(self, centroid: FloatArray | None = None, threshold: float = 1.0) -> None:
        self.centroid = centroid
        self.threshold = threshold

    def fit(self, normal_vectors: FloatArray, labels: npt.NDArray[np.str_] | None = None) -> None:
        self.centroid = normal_vectors.mean(axis=0)
        self.threshold = float(np.linalg.norm(normal_vectors - self.centroid, axis=1).max())

    def score(self, vectors: FloatArray) -> Scores:
        assert self.centroid is not None
        distance = np.linalg.norm(vectors - self.centroid, axis=1).astype(np.float64)
        return Scores(distance / self.threshold, np.zeros(len(vectors), dtype=np.int64), distance)

    @property
    def cluster_labels(self) -> list[str] | None:
        return None

    def save(self, directory: Path) -> list[Path]:
        path = directory / "model.pkl"
        path.write_bytes(pickle.dumps({"centroid": self.centroid, "threshold": self.threshold}))
        return [path]

    @classmethod
    def load(cls, directory: Path) -> Detector:
        state = pickle.loads((directory / "model.pkl").read_bytes())
        return cls(state["centroid"], state["threshold"])


class FailingDetector(PickleDetector):
    name = "test-failing"

    def save(self, directory: Path) -> list[Path]:
        (directory / "partial.npy").write_bytes(b"half")
        raise OSError("disk full")


class _Payload:
    """Unpickling this creates a directory: evidence that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(agent.model.detectors.DETECTORS, PickleDetector.name, PickleDetector)


@pytest.fixture
def fake_embedder_dir(tmp_path: Path) -> Path:
    """The bundle copies and hashes the embedder files without running them, so bytes suffice here."""
    d = tmp_path / "embedder-export"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"\x08\x07onnx-bytes" * 100)
    (d / "tokenizer.json").write_text('{"model": "wordpiece"}', encoding="utf-8")
    (d / "embedder.json").write_text(json.dumps({"model_id": "fake-minilm", "dim": 4}), encoding="utf-8")
    return d


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _vectors(n: int, seed: int) -> FloatArray:
    v = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    unit: FloatArray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def _write(out: Path, embedder_dir: Path, seed: int = 0, detector: Detector | None = None) -> Path:
    det = detector or PickleDetector()
    det.fit(_vectors(50, seed))
    return write_bundle(
        out,
        embedder_dir=embedder_dir,
        text_prep=TextPreparation(fields=("msg",), mask=True, max_chars=500),
        detector=det,
        training_summary={"input": "train.jsonl", "records": 50},
        evaluation={"target_fpr": 0.01, "heldout_fpr": 0.0},
        detector_params={"target_fpr": 0.01},
        training_sample=_vectors(10, seed),
    )


def test_round_trip(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    bundle = load_bundle(out)

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert bundle.manifest == manifest
    assert bundle.sha256 == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert bundle.model_id == manifest["model_id"]
    assert bundle.model_id.startswith("test-pickle-") and len(bundle.model_id) == len("test-pickle-") + 12
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["created_at"].endswith("Z")
    assert manifest["detector"] == {
        "name": "test-pickle",
        "params": {"target_fpr": 0.01},
        "cluster_labels": None,
    }
    assert manifest["embedder"] == {"model_id": "fake-minilm", "dim": 4}
    assert manifest["training"] == {"input": "train.jsonl", "records": 50}
    assert manifest["evaluation"] == {"target_fpr": 0.01, "heldout_fpr": 0.0}
    assert sorted(manifest["files"]) == [
        "detector/model.pkl",
        "embedder/embedder.json",
        "embedder/model.onnx",
        "embedder/tokenizer.json",
        "text_preparation.json",
        "training_sample.npy",
    ]
    assert bundle.detector_name == "test-pickle"
    assert bundle.text_prep == TextPreparation(fields=("msg",), mask=True, max_chars=500)
    assert bundle.embedder_dir == out / "embedder"
    assert (bundle.embedder_dir / "model.onnx").read_bytes() == (
        fake_embedder_dir / "model.onnx"
    ).read_bytes()
    sample = bundle.training_sample()
    assert sample is not None
    np.testing.assert_array_equal(sample, _vectors(10, 0))

    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # readable by the agent's user, not 0700

    original = PickleDetector()
    original.fit(_vectors(50, 0))
    probe = _vectors(7, 99)
    np.testing.assert_allclose(bundle.detector.score(probe).score, original.score(probe).score)


def test_replacing_a_bundle_swaps_it_whole_and_leaves_no_temporaries(
    tmp_path: Path, fake_embedder_dir: Path
) -> None:
    out = tmp_path / "bundle"
    first = load_bundle(_write(out, fake_embedder_dir, seed=0))
    second = load_bundle(_write(out, fake_embedder_dir, seed=1))
    assert first.sha256 != second.sha256
    assert first.model_id != second.model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "embedder-export"]


def test_failed_write_keeps_the_old_bundle(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = tmp_path / "bundle"
    before = load_bundle(_write(out, fake_embedder_dir)).sha256
    with pytest.raises(OSError, match="disk full"):
        _write(out, fake_embedder_dir, detector=FailingDetector())
    assert load_bundle(out).sha256 == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "embedder-export"]


def test_refuses_to_overwrite_something_that_is_not_a_bundle(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(BundleError, match="is not a model bundle; refusing to replace it"):
        _write(out, fake_embedder_dir)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_one_changed_byte_is_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    model = out / "embedder" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        load_bundle(out)
    message = str(info.value)
    assert "embedder/model.onnx does not match its sha256 in manifest.json" in message
    assert message.endswith("re-train or restore the bundle")


def test_missing_file_is_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    (out / "text_preparation.json").unlink()
    with pytest.raises(
        BundleError, match=r"text_preparation\.json is missing; re-train or restore the bundle"
    ):
        load_bundle(out)


def test_unlisted_file_in_detector_dir_is_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    (out / "detector" / "extra.pkl").write_bytes(b"whatever")
    with pytest.raises(BundleError, match=r"detector/extra\.pkl is not listed in manifest\.json"):
        load_bundle(out)


def test_symlinked_file_is_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    target = tmp_path / "elsewhere.json"
    (out / "text_preparation.json").rename(target)
    (out / "text_preparation.json").symlink_to(target)
    with pytest.raises(BundleError, match=r"text_preparation\.json is a symbolic link"):
        load_bundle(out)


def _edit_manifest(out: Path, **changes: Any) -> None:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(changes)
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_other_format_version_is_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    _edit_manifest(out, format_version=FORMAT_VERSION + 1)
    with pytest.raises(
        BundleError, match=r"format_version 2 is not supported \(this agent reads 1\); re-train"
    ):
        load_bundle(out)


def test_manifest_paths_outside_the_bundle_are_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    _edit_manifest(out, files={**manifest["files"], "../embedder-export/model.onnx": "0" * 64})
    with pytest.raises(BundleError, match=r"invalid file name '\.\./embedder-export/model\.onnx'"):
        load_bundle(out)


def test_missing_directory_and_garbled_manifest(tmp_path: Path, fake_embedder_dir: Path) -> None:
    with pytest.raises(BundleError, match="no such directory; train one with `anomaly-agent train`"):
        load_bundle(tmp_path / "nope")
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    (out / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON"):
        load_bundle(out)


def test_tampered_pickle_is_refused_before_it_is_unpickled(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write(tmp_path / "bundle", fake_embedder_dir)
    marker = tmp_path / "pickle-was-executed"
    (out / "detector" / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(BundleError, match=r"detector/model\.pkl does not match its sha256"):
        load_bundle(out)
    assert not marker.exists()

    # Control: the same files read without verification do run the payload, so the check above matters.
    with pytest.raises(TypeError):
        PickleDetector.load(out / "detector")
    assert marker.is_dir()


def test_real_hdbscan_pickle_swapped_for_a_payload_is_never_unpickled(
    tmp_path: Path, fake_embedder_dir: Path
) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 24))
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(80, 24)) for c in centres]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    detector = HdbscanDetector()
    detector.fit(vectors)
    out = write_bundle(
        tmp_path / "bundle",
        embedder_dir=fake_embedder_dir,
        text_prep=TextPreparation(),
        detector=detector,
        training_summary={},
        evaluation={},
    )
    assert load_bundle(out).detector_name == "hdbscan"
    pickles = sorted(p.relative_to(out).as_posix() for p in (out / "detector").glob("*.pkl"))
    assert pickles, "the hdbscan detector is expected to save a pickle"
    marker = tmp_path / "pickle-was-executed"
    for rel in pickles:
        (out / rel).write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(BundleError, match=rf"{pickles[0]} does not match its sha256"):
        load_bundle(out)
    assert not marker.exists()

    # Control: reading the same files without verification runs the payload.
    HdbscanDetector.load(out / "detector")
    assert marker.is_dir()


PATTERNS = ["disk <NUM> ok", "user <EMAIL> logged in", "cache parity error corrected", "job <NUM> done"]


def _write_with_patterns(out: Path, embedder_dir: Path, *, dim: int = 4) -> Path:
    detector = PickleDetector()
    detector.fit(_vectors(50, 0))
    examples = Examples.from_vectors(PATTERNS, np.eye(len(PATTERNS), dim))
    return write_bundle(
        out,
        embedder_dir=embedder_dir,
        text_prep=TextPreparation(fields=("msg",)),
        detector=detector,
        training_summary={"patterns": {"distinct": 4, "known": 4, "examples": 4}},
        evaluation={},
        known_patterns=KnownPatterns.from_texts(PATTERNS),
        examples=examples,
    )


def test_training_patterns_round_trip(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write_with_patterns(tmp_path / "bundle", fake_embedder_dir)
    files = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"]
    for name in ("known_patterns.npy", "examples.npy", "examples.jsonl"):
        assert files[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    bundle = load_bundle(out)
    assert bundle.known_patterns is not None and bundle.examples is not None
    assert len(bundle.known_patterns) == len(PATTERNS)
    assert all(text in bundle.known_patterns for text in PATTERNS)
    assert "disk <NUM> failed" not in bundle.known_patterns
    assert bundle.examples.texts == tuple(PATTERNS)
    assert bundle.examples.nearest(np.array([[0.0, 0.0, 1.0, 0.1]]), k=2) == [
        [Neighbour("cache parity error corrected", 0.995), Neighbour("job <NUM> done", 0.0995)]
    ]


def test_a_bundle_without_pattern_files_loads_with_none(tmp_path: Path, fake_embedder_dir: Path) -> None:
    """Bundles written before training patterns were kept have no such files: still loadable."""
    bundle = load_bundle(_write(tmp_path / "bundle", fake_embedder_dir))
    assert bundle.examples is None
    assert bundle.known_patterns is None


@pytest.mark.parametrize("name", ["examples.jsonl", "examples.npy", "known_patterns.npy"])
def test_tampered_pattern_files_are_refused(tmp_path: Path, fake_embedder_dir: Path, name: str) -> None:
    out = _write_with_patterns(tmp_path / "bundle", fake_embedder_dir)
    path = out / name
    if name == "examples.jsonl":
        path.write_text(path.read_text(encoding="utf-8").replace("logged in", "logged out"), encoding="utf-8")
    else:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        load_bundle(out)
    assert f"{name} does not match its sha256 in manifest.json (modified or corrupted)" in str(info.value)
    assert str(info.value).endswith("re-train or restore the bundle")


def _rehash(out: Path, name: str) -> None:
    """Make the manifest agree with an edited file, as someone rewriting a whole bundle could."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_inconsistent_pattern_files_are_refused(tmp_path: Path, fake_embedder_dir: Path) -> None:
    out = _write_with_patterns(tmp_path / "bundle", fake_embedder_dir)
    (out / "examples.jsonl").unlink()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    del manifest["files"]["examples.jsonl"]
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match=r"manifest\.json lists examples\.npy but not examples\.jsonl"):
        load_bundle(out)

    out = _write_with_patterns(tmp_path / "b2", fake_embedder_dir)
    (out / "examples.jsonl").write_text('"only one"\n', encoding="utf-8")
    _rehash(out, "examples.jsonl")
    with pytest.raises(
        BundleError, match=r"examples\.npy/examples\.jsonl are invalid \(1 texts but 4 vectors\)"
    ):
        load_bundle(out)

    out = _write_with_patterns(tmp_path / "b3", fake_embedder_dir)
    np.save(out / "known_patterns.npy", np.array([5, 3], dtype=np.uint64), allow_pickle=False)
    _rehash(out, "known_patterns.npy")
    with pytest.raises(BundleError, match=r"known_patterns\.npy is invalid \(pattern hashes must be sorted"):
        load_bundle(out)

    out = _write_with_patterns(tmp_path / "b4", fake_embedder_dir, dim=5)
    with pytest.raises(BundleError, match=r"examples\.npy has dimension 5, the embedder 4"):
        load_bundle(out)
