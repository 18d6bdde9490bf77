"""Training side: ONNX export, fitting, calibration, evaluation and plots (may import torch)."""
