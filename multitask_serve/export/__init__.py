"""Export the frozen trunk and per-task heads to ONNX, each checked against its PyTorch module."""
