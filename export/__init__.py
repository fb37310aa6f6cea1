"""Export the frozen trunk and per-task heads to ONNX, each checked against its PyTorch module."""

import os

# Nothing here may reach a model hub: encoders load from local directories only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
