"""Detectors: fit on normal embeddings, score new ones (higher = more anomalous, > 1.0 = beyond threshold)."""
