"""Thin ONNX Runtime session wrappers: with service/trunk.py, the only code that touches
onnxruntime.

A ``Runtime`` says where graphs run. On the CPU, taps are numpy arrays. On a GPU the trunk's taps
stay in device memory (IO binding): heads read them there, a sub-batch is picked there, and only
the heads' small outputs are copied back to the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import onnxruntime as ort

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
# A trunk tap: a numpy array on the host, or an OrtValue where the trunk ran (IO binding).
Tap: TypeAlias = np.ndarray | ort.OrtValue


class GraphError(ValueError):
    """A graph ONNX Runtime cannot load, or whose signature does not fit."""


class RuntimeUnavailable(RuntimeError):
    """The configured device cannot be used by this ONNX Runtime build."""


@dataclass(frozen=True)
class Runtime:
    """Where every session of one service runs, and how tensors move between them."""

    device: Device = "cpu"
    device_id: int = 0
    # ORT intra-op threads per session run; 0 lets ORT use every core.
    threads: int = 0
    # Keep taps on the device between trunk and heads. None: on for CUDA, off for the CPU, where
    # numpy arrays already are where the graphs run. On for the CPU only to test the bound path.
    io_binding: bool | None = None
    # Let each session's intra-op workers spin after a run instead of sleeping. Off: see options().
    spinning: bool = False
    # ONNX Runtime's CPU memory arena: keeps each session's largest activations resident for
    # reuse (off: given back after each run; service/memory.py).
    cpu_arena: bool = False

    @property
    def bound(self) -> bool:
        return self.device == "cuda" if self.io_binding is None else self.io_binding

    def check(self) -> None:
        if self.device != "cuda":
            return
        preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu only
        if preload is not None:
            # CUDA and cuDNN from the nvidia-* wheels, so that no LD_LIBRARY_PATH is needed.
            preload()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable(
                "MTS_DEVICE=cuda, but this ONNX Runtime has no CUDAExecutionProvider (has "
                f"{ort.get_available_providers()}); install the gpu extra (onnxruntime-gpu) "
                "instead of onnxruntime, and check the CUDA libraries it needs are found"
            )

    def providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if self.device == "cuda":
            return [
                ("CUDAExecutionProvider", {"device_id": str(self.device_id)}),
                "CPUExecutionProvider",
            ]
        return ["CPUExecutionProvider"]

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        # Measured on 2 cores: plain ORT_ENABLE_ALL beat the transformer optimizer by 3-11%.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = self.cpu_arena
        # Each session owns a thread pool whose workers spin after a run. With a trunk and many
        # heads on few cores the spinning pools starve each other: measured on 2 cores
        # (bench/heads_vs_models.py), trunk + 3 heads took 83.8 ms spinning vs 38.0 ms not.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        return options

    @property
    def compiles(self) -> bool:
        """Whether heads can be compiled for this runtime (``compile``): on the CPU, whose
        weight packing is what compiling saves."""
        return self.device == "cpu"

    def compile(self, model: bytes, folder: Path) -> None:
        """Write ``model`` into the new folder ``folder`` as this runtime runs it: the graph
        after ONNX Runtime's optimisations (``COMPILED_GRAPH``), its weights and their packed
        forms in one file beside it (``COMPILED_WEIGHTS``), which ``session(folder)`` maps
        instead of parsing, copying and packing them again. The packed forms are this CPU's and
        this ONNX Runtime's (``compiled_key``): a compiled head is a replica's own cache."""
        folder.mkdir()
        options = self.options()
        options.optimized_model_filepath = str(folder / COMPILED_GRAPH)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", COMPILED_WEIGHTS
        )
        options.add_session_config_entry(
            "session.save_external_prepacked_constant_initializers", "1"
        )
        ort.InferenceSession(model, options, providers=self.providers())

    def session(self, model: str | bytes | Path) -> ort.InferenceSession:
        """A session of a graph (its bytes or file), or of a folder ``compile`` wrote."""
        options = self.options()
        if isinstance(model, Path):  # compiled: already optimised, weights packed
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            model = str(model / COMPILED_GRAPH)
        session = ort.InferenceSession(model, options, providers=self.providers())
        _forget_model_bytes(session)
        # ORT falls back to the CPU, with only a log line, when CUDA's libraries do not load.
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise RuntimeUnavailable(
                "the CUDA execution provider did not start (CUDA or cuDNN libraries not found?); "
                "ONNX Runtime's log above says why"
            )
        return session


CPU = Runtime()
COMPILED_GRAPH = "head.onnx"
COMPILED_WEIGHTS = "weights.bin"


def compiled_key() -> str:
    """What a compiled head is valid for: this ONNX Runtime and this CPU (its packed weights
    are laid out for the kernels this build picks on this CPU's instruction set)."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
            if line.startswith("flags") or line.startswith("Features"):
                break
    cpu = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"ort-{ort.__version__}-{platform.machine()}-{cpu}"


def _forget_model_bytes(session: ort.InferenceSession) -> None:
    """Let go of the serialised graph a session was made from.

    ONNX Runtime's Python wrapper keeps the bytes it was given for the life of the session, only
    to rebuild it if a provider fails and it falls back to another; the session itself holds its
    weights in its own memory. Measured with MiniLM: the trunk made from bytes held 183 MiB against
    102 MiB made from its file. Fallback is turned off first, so nothing needs them again (an
    execution provider that fails here raises instead, which ``Runtime.session`` does anyway).
    """
    if getattr(session, "_model_bytes", None) is not None:
        session.disable_fallback()
        session._model_bytes = None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim; elsewhere a no-op).

    Loading graphs allocates and frees hundreds of MiB (the parsed model, its serialised parts,
    the copies sessions make), which glibc otherwise keeps in the process: measured with MiniLM and
    three heads, 447 MiB resident after cutting the trunk against 354 MiB after a trim.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RowPicker:
    """hidden[rows] for a tap, wherever the tap lives."""

    def __init__(self, hidden_size: int, runtime: Runtime = CPU) -> None:
        self._runtime = runtime
        self._session = runtime.session(graphs.rows_graph(hidden_size)) if runtime.bound else None

    def take(self, hidden: Tap, rows: list[int]) -> Tap:
        if isinstance(hidden, np.ndarray):
            return hidden[rows]
        assert self._session is not None
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(HEAD_HIDDEN_INPUT, hidden)
        binding.bind_cpu_input("rows", np.asarray(rows, dtype=np.int64))
        binding.bind_output("picked", self._runtime.device, self._runtime.device_id)
        self._session.run_with_iobinding(binding)
        picked: ort.OrtValue = binding.get_outputs()[0]
        return picked


class HeadSession:
    def __init__(
        self, model: bytes | Path, output_name: str, hidden_size: int, runtime: Runtime = CPU
    ) -> None:
        """A head's session from its graph's bytes, or from the folder ``Runtime.compile``
        made of them."""
        try:
            self._session = runtime.session(model)
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

    def run(self, hidden: Tap, attention_mask: np.ndarray) -> np.ndarray:
        """The head's output, always on the host (it is small: logits or one vector per text)."""
        if isinstance(hidden, np.ndarray):
            feeds = {HEAD_HIDDEN_INPUT: hidden, HEAD_MASK_INPUT: attention_mask}
            out: np.ndarray = self._session.run([self.output_name], feeds)[0]
            return out
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(HEAD_HIDDEN_INPUT, hidden)
        binding.bind_cpu_input(HEAD_MASK_INPUT, attention_mask)
        binding.bind_output(self.output_name, "cpu")
        self._session.run_with_iobinding(binding)
        result: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return result
