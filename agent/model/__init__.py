"""The model: the bundle on disk, the ONNX embedder, text preparation (masking), the pattern
table, the training examples and the detectors; also the artefact cache and the training defaults.

May import ``agent.config`` and ``agent.decode`` only; nothing of Kafka, alerts or the loop, so
``train``/``score``/``evaluate`` use exactly the agent's scoring without its plumbing (import-linter).
"""
