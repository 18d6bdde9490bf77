"""Detection defaults, in a module light enough for ``anomaly-agent --help`` (no numpy/sklearn).

``DEFAULT_DETECTOR`` is what ``train`` fits without ``--detector``: the candidate whose worst gap to
the better of two anchors (the seeds' k-means radius and 5-NN, both on raw text) over every
labelled dev set is smallest (bench/quality.py, table in docs/detectors.md) — ``fused`` in its
default composition (knn + tfidf + unseen, corroborated), with the value view on masked text.
``CALIBRATION_SPLITS`` are the ways a detector's held-out calibration part is chosen; the default
is the one measured to keep the false-positive rate nearest its target (docs/detectors.md).
"""

from __future__ import annotations

DEFAULT_DETECTOR = "fused"
CALIBRATION_SPLITS = ("random", "tail")
DEFAULT_CALIBRATION_SPLIT = "random"
