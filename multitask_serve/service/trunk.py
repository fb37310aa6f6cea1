"""The frozen trunk as ONNX Runtime sessions, cut at the taps heads read (service/sessions.py
holds the runtime and the heads' sessions)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.types import HEAD_MASK_INPUT, tap_name
from multitask_serve.service.sessions import CPU, Runtime, Tap, release_freed_memory

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]


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
