"""What a head costs to serve, relative to the trunk, measured side by side in ONNX Runtime."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from multitask_serve.modelrepo.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT, tap_name


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class CostMeter:
    """Times the trunk once on a fixed batch; each head on that batch's tap, interleaved."""

    def __init__(self, trunk_model: bytes, feeds: dict[str, np.ndarray], repeats: int = 15) -> None:
        self._trunk = _session(trunk_model)
        self._feeds = feeds
        self._repeats = repeats
        names = [o.name for o in self._trunk.get_outputs()]
        self._taps = dict(zip(names, self._trunk.run(names, feeds), strict=True))

    def trunk_seconds(self) -> float:
        return _median_seconds(lambda: self._trunk.run(None, self._feeds), self._repeats)

    def head_ratio(self, head_model: bytes, branch: int) -> float:
        """Head time / trunk time, each the median of interleaved runs on the same batch."""
        head = _session(head_model)
        head_feeds = {
            HEAD_HIDDEN_INPUT: self._taps[tap_name(branch)],
            HEAD_MASK_INPUT: self._feeds["attention_mask"],
        }
        ratios = []
        for _ in range(3):
            trunk = self.trunk_seconds()
            ratios.append(
                _median_seconds(lambda: head.run(None, head_feeds), self._repeats) / trunk
            )
        return statistics.median(ratios)
