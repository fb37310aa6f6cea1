"""Declared ONNX export that always ends in a parity check against the PyTorch module.

An ``ExportDecl`` names a graph's inputs, outputs, dynamic axes, opset and tolerance. ``export``
traces the module with ``torch.onnx.export``, loads the bytes in ONNX Runtime, runs both on the
sample inputs and raises ``ParityError`` if any output differs by more than the tolerance.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 18
# Measured: trunk taps of all-MiniLM-L6-v2 match within ~4e-6, heads within ~1e-6; the tolerance
# leaves an order of magnitude for other encoders and thread counts.
TRUNK_TOLERANCE = 1e-4
HEAD_TOLERANCE = 1e-4

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """An exported graph does not reproduce its PyTorch module."""


@dataclass(frozen=True)
class ExportDecl:
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # Axis 0 is the batch, axis 1 the sequence, for every input and output that has them.
    dynamic_axes: dict[str, dict[int, str]]
    tolerance: float
    opset: int = OPSET


@dataclass(frozen=True)
class Exported:
    model: bytes
    max_abs_diff: float


def session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _trace(module: nn.Module, sample: Sequence[torch.Tensor], decl: ExportDecl) -> bytes:
    # The exporter warns on every call that torchvision's operators are not registered: we use none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / f"{decl.name}.onnx"
        # The exporter reports each of its passes on stdout; keep our CLI's output readable.
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module,
                tuple(sample),
                str(path),
                input_names=list(decl.input_names),
                output_names=list(decl.output_names),
                dynamic_axes=decl.dynamic_axes,
                opset_version=decl.opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{decl.name}: export produced external data, which heads refuse")
    # The exporter annotates nodes with stack traces holding this machine's file paths. The graph's
    # bytes are the trunk fingerprint, so they must depend on the weights alone.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model.SerializeToString()


def max_abs_diff(
    model: bytes,
    module: nn.Module,
    feeds: dict[str, torch.Tensor],
    output_names: Sequence[str],
) -> float:
    """Largest absolute difference between the ONNX graph and the module over every output."""
    with torch.no_grad():
        expected = module(*feeds.values())
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    got = session(model).run(list(output_names), {k: v.numpy() for k, v in feeds.items()})
    diffs = [float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected, strict=True)]
    return max(diffs)


def export(
    module: nn.Module,
    sample: dict[str, torch.Tensor],
    decl: ExportDecl,
    check: dict[str, torch.Tensor] | None = None,
    reference: nn.Module | None = None,
) -> Exported:
    """Trace ``module`` on ``sample``; check parity on ``check`` (a different shape) too.

    Parity is measured against ``reference`` where given (e.g. the library's own forward pass),
    else against ``module`` itself.
    """
    module.eval()
    model = _trace(module, list(sample.values()), decl)
    ref = (reference or module).eval()
    diff = max_abs_diff(model, ref, sample, decl.output_names)
    if check is not None:
        diff = max(diff, max_abs_diff(model, ref, check, decl.output_names))
    log.info("%s parity: max abs diff %.3g (tolerance %.0e)", decl.name, diff, decl.tolerance)
    if not diff <= decl.tolerance:
        raise ParityError(
            f"{decl.name}: ONNX differs from PyTorch by {diff:.3g} > tolerance {decl.tolerance:.0e}"
        )
    return Exported(model=model, max_abs_diff=diff)
