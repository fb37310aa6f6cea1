"""Thin ONNX Runtime session wrappers: the only module that touches onnxruntime.

A ``Runtime`` says where graphs run. On the CPU, taps are numpy arrays. On a GPU the trunk's taps
stay in device memory (IO binding): heads read them there, a sub-batch is picked there, and only
the heads' small outputs are copied back to the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT, tap_name

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "fp16"]
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
    # ONNX Runtime's CPU memory arena: keeps the largest activations seen for reuse.
    cpu_arena: bool = True

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

    def session(self, model: str | bytes) -> ort.InferenceSession:
        session = ort.InferenceSession(model, self.options(), providers=self.providers())
        _forget_model_bytes(session)
        # ORT falls back to the CPU, with only a log line, when CUDA's libraries do not load.
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise RuntimeUnavailable(
                "the CUDA execution provider did not start (CUDA or cuDNN libraries not found?); "
                "ONNX Runtime's log above says why"
            )
        return session


CPU = Runtime()


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


def to_fp16(model: bytes) -> bytes:
    """The trunk with fp16 weights and arithmetic; int64 ids in, float32 taps out as before.

    Heads and the fingerprint stay those of the fp32 trunk: the conversion is made at load time
    from the fingerprinted fp32 file, so heads trained against it keep working unchanged.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return bytes(converted.SerializeToString())


@dataclass(frozen=True)
class _Segment:
    start: int | None  # the tap it reads; None: the trunk's own inputs
    end: int  # the tap it yields
    session: ort.InferenceSession


@dataclass(frozen=True)
class _Plan:
    """The trunk cut at ``cuts``: segment i yields tap ``cuts[i]`` and the next one reads it."""

    cuts: tuple[int, ...]
    segments: tuple[_Segment, ...]


class TrunkSession:
    """The frozen trunk, run only as deep as the deepest tap a call asks for.

    ONNX Runtime runs a whole graph whatever outputs are asked, so the trunk is cut into segments
    at the taps the served heads read (``graphs.trunk_segment``): a batch whose heads all read tap 4
    of 6 runs layers 1-4 and stops. The cuts are made at load time from the one fingerprinted
    graph, so the repository keeps one trunk; they only grow, as heads with new taps are probed.
    A graph that cannot be cut runs whole, as before.
    """

    def __init__(
        self,
        model_path: Path,
        runtime: Runtime = CPU,
        precision: Precision = "fp32",
        segmented: bool = True,
    ) -> None:
        """``segmented=False`` runs the trunk whole, every layer for every batch (as a baseline)."""
        self._runtime = runtime
        self._model_path = model_path
        self._precision = precision
        self._lock = threading.Lock()
        self._whole: ort.InferenceSession | None = None
        self._plan = _Plan((), ())
        self.input_names, self.output_names = self._cut(None, whole=not segmented)

    def _session(self, model: bytes) -> ort.InferenceSession:
        # fp16 is made per segment from the fp32 graph, float32 at every cut: the casts there are
        # exact, so a chain of fp16 segments still computes what the whole fp16 graph does.
        return self._runtime.session(to_fp16(model) if self._precision == "fp16" else model)

    def _cut(
        self, cuts: tuple[int, ...] | None, whole: bool = False
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Cut the trunk at ``cuts`` (None: at its last tap only), or load it whole; returns its
        input and output names. The parsed graph lives only for this call."""
        proto = onnx.load(str(self._model_path))
        names = (
            tuple(i.name for i in proto.graph.input),
            tuple(o.name for o in proto.graph.output),
        )
        try:
            if whole:
                self._whole = self._session(proto.SerializeToString())
            else:
                self._plan = self._planned(proto, cuts or (len(names[1]) - 1,))  # one assignment
        except graphs.NotSegmentable as exc:
            log.warning("the trunk runs whole, every layer for every batch: %s", exc)
            self._whole = self._session(proto.SerializeToString())
            self._plan = _Plan((), ())
        del proto
        release_freed_memory()
        return names

    @property
    def cuts(self) -> tuple[int, ...]:
        """The taps the trunk is cut at (empty when it runs whole)."""
        return self._plan.cuts

    def _planned(self, proto: onnx.ModelProto, cuts: tuple[int, ...]) -> _Plan:
        reuse = {(s.start, s.end): s for s in self._plan.segments}
        segments, start = [], None
        for end in cuts:
            segment = reuse.get((start, end))
            if segment is None:
                part = graphs.trunk_segment(proto, start, end)
                segment = _Segment(start, end, self._session(part.SerializeToString()))
            segments.append(segment)
            start = end
        return _Plan(cuts, tuple(segments))

    def prepare(self, taps: set[int]) -> _Plan:
        """Cut the trunk at these taps too (a no-op when it already is)."""
        if self._whole is None and not taps <= set(self._plan.cuts):
            with self._lock:
                if self._whole is None and not taps <= set(self._plan.cuts):
                    self._cut(tuple(sorted(set(self._plan.cuts) | taps)))
        return self._plan

    def run(self, feeds: dict[str, np.ndarray], taps: list[str]) -> dict[str, Tap]:
        """Hidden states at the named taps, for every row: numpy arrays, or OrtValues left on
        the device."""
        wanted = [int(name.removeprefix("tap_")) for name in taps]
        rows = list(range(feeds[HEAD_MASK_INPUT].shape[0]))
        out = self.run_rows(feeds, dict.fromkeys(wanted, rows))
        return {name: out[tap][0] for name, tap in zip(taps, wanted, strict=True)}

    def run_rows(
        self, feeds: dict[str, np.ndarray], needs: Mapping[int, Collection[int]]
    ) -> dict[int, tuple[Tap, list[int]]]:
        """Each tap for the rows that need it: ``needs`` maps a tap to the rows (of the batch)
        whose heads read it. A row goes through the layers up to the deepest tap it needs and no
        further, so in a batch mixing shallow and deep heads only the deep heads' rows pay for
        the last layers. Returns, per tap, its hidden state and the rows it holds (ascending; at
        least the rows asked for, possibly more). Taps kept on a device hold every row.
        """
        rows = feeds[HEAD_MASK_INPUT].shape[0]
        plan = self.prepare(set(needs))
        if self._whole is not None:
            whole = self._run_whole(feeds, [tap_name(t) for t in needs])
            return {t: (whole[tap_name(t)], list(range(rows))) for t in needs}
        depth = [-1] * rows  # the deepest tap each row needs
        for tap, wanting in needs.items():
            for row in wanting:
                depth[row] = max(depth[row], tap)
        if self._runtime.bound:  # rows are not dropped on the device
            depth = [max(needs)] * rows
        active = list(range(rows))  # the rows ``hidden`` holds, ascending
        mask = feeds[HEAD_MASK_INPUT]
        out: dict[int, tuple[Tap, list[int]]] = {}
        hidden: Tap | None = None
        for segment in plan.segments:
            if segment.start is None:
                hidden = self._run_segment(segment, feeds)
            else:
                assert hidden is not None
                keep = [i for i, row in enumerate(active) if depth[row] >= segment.end]
                if len(keep) < len(active):
                    assert isinstance(hidden, np.ndarray)
                    hidden, active = hidden[keep], [active[i] for i in keep]
                    mask = mask[keep]
                hidden = self._run_segment(
                    segment, {HEAD_MASK_INPUT: mask}, tap_name(segment.start), hidden
                )
            if segment.end in needs:
                out[segment.end] = (hidden, active)
            if len(out) == len(needs):
                break
        return out

    def _run_segment(
        self,
        segment: _Segment,
        feeds: dict[str, np.ndarray],
        hidden_name: str | None = None,
        hidden: Tap | None = None,
    ) -> Tap:
        output = tap_name(segment.end)
        if not self._runtime.bound:
            if hidden_name is not None:
                assert isinstance(hidden, np.ndarray)
                feeds = {**feeds, hidden_name: hidden}
            result: np.ndarray = segment.session.run([output], feeds)[0]
            return result
        binding = segment.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        if hidden_name is not None:
            assert isinstance(hidden, ort.OrtValue)
            binding.bind_ortvalue_input(hidden_name, hidden)
        binding.bind_output(output, self._runtime.device, self._runtime.device_id)
        segment.session.run_with_iobinding(binding)
        tap: ort.OrtValue = binding.get_outputs()[0]
        return tap

    def _run_whole(self, feeds: dict[str, np.ndarray], taps: list[str]) -> dict[str, Tap]:
        assert self._whole is not None
        if not self._runtime.bound:
            return dict(zip(taps, self._whole.run(taps, feeds), strict=True))
        binding = self._whole.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for tap in taps:
            binding.bind_output(tap, self._runtime.device, self._runtime.device_id)
        self._whole.run_with_iobinding(binding)
        return dict(zip(taps, binding.get_outputs(), strict=True))


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
        self, model: bytes, output_name: str, hidden_size: int, runtime: Runtime = CPU
    ) -> None:
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
