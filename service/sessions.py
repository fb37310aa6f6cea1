"""Thin ONNX Runtime session wrappers: the only module that touches onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from spec.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT


class GraphError(ValueError):
    """A graph ONNX Runtime cannot load, or whose signature does not fit."""


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Measured on 2 cores: plain ORT_ENABLE_ALL beat the transformer optimizer by 3-11%.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Each session owns a thread pool whose workers spin after a run. With a trunk and many
    # heads on few cores the spinning pools starve each other: measured on 2 cores
    # (bench/heads_vs_models.py), trunk + 3 heads took 83.8 ms spinning vs 38.0 ms not.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class TrunkSession:
    def __init__(self, model_path: Path, threads: int = 0) -> None:
        self._session = ort.InferenceSession(
            str(model_path), _options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray], taps: list[str]) -> dict[str, np.ndarray]:
        """Hidden states at the named taps."""
        return dict(zip(taps, self._session.run(taps, feeds), strict=True))


class HeadSession:
    def __init__(self, model: bytes, output_name: str, hidden_size: int, threads: int = 0) -> None:
        try:
            self._session = ort.InferenceSession(
                model, _options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad graph
            raise GraphError(f"ONNX Runtime cannot load the head graph: {exc}") from exc
        self.output_name = output_name
        self._check_signature(hidden_size)

    def _check_signature(self, hidden_size: int) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if set(inputs) != {HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT}:
            raise GraphError(
                f"head inputs are {sorted(inputs)}; expected {HEAD_HIDDEN_INPUT!r} and "
                f"{HEAD_MASK_INPUT!r}"
            )
        hidden = inputs[HEAD_HIDDEN_INPUT]
        if hidden.type != "tensor(float)" or len(hidden.shape) != 3:
            raise GraphError(
                f"head input {HEAD_HIDDEN_INPUT!r} must be float32 (batch, seq, hidden)"
            )
        if hidden.shape[2] != hidden_size:
            raise GraphError(
                f"head input {HEAD_HIDDEN_INPUT!r} has width {hidden.shape[2]}, the trunk's taps "
                f"have {hidden_size}"
            )
        mask = inputs[HEAD_MASK_INPUT]
        if mask.type != "tensor(int64)" or len(mask.shape) != 2:
            raise GraphError(f"head input {HEAD_MASK_INPUT!r} must be int64 (batch, seq)")
        if self.output_name not in outputs:
            raise GraphError(f"head has no output {self.output_name!r} (has {sorted(outputs)})")

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {HEAD_HIDDEN_INPUT: hidden, HEAD_MASK_INPUT: attention_mask}
        out: np.ndarray = self._session.run([self.output_name], feeds)[0]
        return out
