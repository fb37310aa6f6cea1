"""The depth-aware trunk: cut at the taps heads read, run only as deep as a batch needs.

The reference is the whole trunk graph in one ONNX Runtime session, as it was served before
segments: every tap of every batch must be bit-identical to it, on the host and bound paths.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from multitask_serve.modelrepo import graphs
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import tap_name
from multitask_serve.service.sessions import CPU, Runtime
from multitask_serve.service.trunk import TrunkSession


def feeds_for(spec, rng, rows, width):
    ids = rng.integers(5, 150, size=(rows, width), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(rows):
        keep = int(rng.integers(1, width + 1))
        ids[row, keep:], mask[row, keep:] = 0, 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in spec.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


@pytest.fixture(scope="module")
def trunk(built_repo):
    repo = ModelRepository(built_repo)
    whole = CPU.session(repo.trunk_model_path.read_bytes())
    return repo.read_trunk_spec(), repo.trunk_model_path, whole


@pytest.mark.parametrize("runtime", [CPU, Runtime(io_binding=True)], ids=["host", "bound"])
def test_segmented_taps_are_bit_identical_to_the_whole_graph(trunk, runtime):
    spec, path, whole = trunk
    session = TrunkSession(path, runtime)
    rng = np.random.default_rng(0)
    layers = spec.num_layers
    for _ in range(40):
        wanted = sorted({int(t) for t in rng.choice(layers + 1, size=rng.integers(1, 4))})
        feeds = feeds_for(spec, rng, int(rng.integers(1, 9)), int(rng.integers(2, 40)))
        names = [tap_name(t) for t in wanted]
        got = session.run(feeds, names)
        expected = dict(zip(names, whole.run(names, feeds), strict=True))
        for name in names:
            value = got[name]
            host = value.numpy() if isinstance(value, ort.OrtValue) else value
            np.testing.assert_array_equal(host, expected[name], err_msg=f"{name} of {wanted}")
    # Every tap asked for became a cut, and the trunk was never run whole.
    assert session.cuts == tuple(range(layers + 1))


def test_a_batch_runs_only_as_deep_as_its_deepest_tap(trunk, monkeypatch):
    spec, path, _ = trunk
    session = TrunkSession(path)
    assert session.cuts == (spec.num_layers,)  # one segment until heads read other taps
    session.prepare({1, spec.num_layers - 1})
    assert session.cuts == (1, spec.num_layers - 1, spec.num_layers)
    ran: list[int] = []
    run_segment = session._run_segment

    def counting(segment, *args):
        ran.append(segment.end)
        return run_segment(segment, *args)

    monkeypatch.setattr(session, "_run_segment", counting)
    feeds = feeds_for(spec, np.random.default_rng(1), 2, 8)
    session.run(feeds, [tap_name(1)])
    assert ran == [1]
    ran.clear()
    session.run(feeds, [tap_name(spec.num_layers - 1), tap_name(1)])
    assert ran == [1, spec.num_layers - 1]
    ran.clear()
    session.run(feeds, [tap_name(spec.num_layers)])
    assert ran == [1, spec.num_layers - 1, spec.num_layers]


def test_new_cuts_keep_the_segments_already_made(trunk):
    spec, path, _ = trunk
    session = TrunkSession(path)
    session.prepare({2})
    before = {(s.start, s.end): s.session for s in session.prepare(set()).segments}
    plan = session.prepare({1})
    after = {(s.start, s.end): s.session for s in plan.segments}
    assert after[(2, spec.num_layers)] is before[(2, spec.num_layers)]
    assert set(after) == {(None, 1), (1, 2), (2, spec.num_layers)}


def tangled_trunk() -> bytes:
    """A two-layer 'trunk' whose second layer reads the token ids again: it cannot be cut."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    taps = [
        helper.make_tensor_value_info(tap_name(i), TensorProto.FLOAT, ["batch", "seq", 4])
        for i in range(3)
    ]
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], [tap_name(0)]),
        helper.make_node("Relu", [tap_name(0)], [tap_name(1)]),
        helper.make_node("Gather", ["table", "input_ids"], ["again"]),
        helper.make_node("Add", [tap_name(1), "again"], [tap_name(2)]),
    ]
    graph = helper.make_graph(nodes, "tangled", [ids, mask], taps, initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", graphs.OPSET)])
    model.ir_version = graphs.IR_VERSION
    return model.SerializeToString()


def test_a_trunk_that_cannot_be_cut_runs_whole(tmp_path, caplog):
    path = tmp_path / "model.onnx"
    path.write_bytes(tangled_trunk())
    with pytest.raises(graphs.NotSegmentable, match="reads \\['input_ids'\\]"):
        graphs.trunk_segment(onnx.load(str(path)), 1, 2)
    session = TrunkSession(path)
    assert session.cuts == (2,)  # inputs to the last tap: one segment, the whole graph
    feeds = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64)}
    both = session.run(feeds, [tap_name(2), tap_name(1)])  # a cut at 1 is refused: run whole
    assert session.cuts == ()
    assert "runs whole" in caplog.text
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(both[tap_name(1)], table[[[1, 2, 3]]])
    np.testing.assert_array_equal(both[tap_name(2)], 2 * table[[[1, 2, 3]]])


def test_rows_go_only_as_deep_as_their_own_heads(trunk, monkeypatch):
    spec, path, whole = trunk
    session = TrunkSession(path)
    last = spec.num_layers
    ran: list[tuple[int, int]] = []  # (segment end, rows it ran on)
    run_segment = session._run_segment

    def counting(segment, feeds, *args):
        out = run_segment(segment, feeds, *args)
        ran.append((segment.end, out.shape[0]))
        return out

    monkeypatch.setattr(session, "_run_segment", counting)
    rng = np.random.default_rng(2)
    for _ in range(20):
        feeds = feeds_for(spec, rng, 8, int(rng.integers(2, 30)))
        # Rows 0-7: some read tap 1, some the last tap, some both; every row reads something.
        shallow = {int(r) for r in rng.choice(8, size=int(rng.integers(1, 8)), replace=False)}
        deep = set(range(8)) - shallow | {int(rng.integers(0, 8))}
        ran.clear()
        got = session.run_rows(feeds, {1: shallow, last: deep})
        assert ran[0] == (1, 8)  # the first cut: every row
        assert sum(rows for end, rows in ran[1:]) == len(deep) * (len(ran) - 1)
        expected = dict(
            zip((1, last), whole.run([tap_name(1), tap_name(last)], feeds), strict=True)
        )
        for tap, wanted in ((1, shallow), (last, deep)):
            hidden, held = got[tap]
            assert held == sorted(held) and wanted <= set(held)
            # A row's layers run on fewer rows, the same padded width: the same values.
            np.testing.assert_array_equal(hidden, expected[tap][held])


def test_an_unsegmented_trunk_is_one_whole_graph_and_never_cut(trunk, monkeypatch):
    spec, path, whole = trunk

    def no_cut(*args: object) -> None:
        raise AssertionError("an unsegmented trunk cut a segment")

    monkeypatch.setattr(graphs, "trunk_segment", no_cut)
    session = TrunkSession(path, segmented=False)
    assert session.cuts == ()
    names = [tap_name(spec.num_layers - 2), tap_name(spec.num_layers)]
    feeds = feeds_for(spec, np.random.default_rng(1), 3, 9)
    got = session.run(feeds, names)
    assert session.cuts == ()
    for name, expected in zip(names, whole.run(names, feeds), strict=True):
        np.testing.assert_array_equal(got[name], expected)
