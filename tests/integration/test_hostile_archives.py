"""Hostile head archives through the admin API: each refused with a 4xx, nothing changed.

"Nothing changed" means the repository's files are byte-identical and every served task returns
bit-identical outputs afterwards. Cases already covered with a repository check elsewhere
(test_error_contract.py: path traversal, bytes that are not ONNX, label count, not an archive) are
not repeated here.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from prometheus_client import CollectorRegistry

from multitask_serve.modelrepo.archive import pack_head, unpack_head
from multitask_serve.modelrepo.types import HEAD_HIDDEN_INPUT, HEAD_MASK_INPUT, HeadSpec
from multitask_serve.service.app import create_app
from tests.conftest import make_settings
from tests.factories import outputs, tree

UPLOAD_LIMIT = 256 << 10


def tar_gz(files: list[tuple[str, bytes, bytes]]) -> bytes:
    """Members as (name, tar type, content or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in files:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                tar.addfile(info)
    return buf.getvalue()


def classifier(
    hidden_type: int, width: int, labels: int, out_type: int = TensorProto.FLOAT
) -> bytes:
    """A valid graph (mean over tokens, then a linear layer) with a chosen input and output."""
    nodes = [
        helper.make_node("Cast", [HEAD_HIDDEN_INPUT], ["h"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["h", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
        helper.make_node("Cast", ["scores"], ["logits"], to=out_type),
        # The mask is an input of every head; read it so that it stays in the graph.
        helper.make_node("Shape", [HEAD_MASK_INPUT], ["unused"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile",
        [
            helper.make_tensor_value_info(HEAD_HIDDEN_INPUT, hidden_type, ["b", "s", width]),
            helper.make_tensor_value_info(HEAD_MASK_INPUT, TensorProto.INT64, ["b", "s"]),
        ],
        [
            helper.make_tensor_value_info("logits", out_type, ["b", labels]),
            helper.make_tensor_value_info("unused", TensorProto.INT64, [2]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.ones((width, labels), dtype=np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def with_external_data(model: bytes, location: str) -> bytes:
    proto = onnx.load_from_string(model)
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    return proto.SerializeToString()


Case = Callable[[HeadSpec, bytes], bytes]
SPEC, MODEL = "head.json", "head.onnx"
REG, SYM, LNK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def _spec_bytes(spec: HeadSpec) -> bytes:
    return spec.to_json().encode()


CASES: dict[str, tuple[int, Case]] = {
    "absolute path": (
        422,
        lambda s, m: tar_gz([(SPEC, REG, _spec_bytes(s)), ("/tmp/head.onnx", REG, m)]),
    ),
    "symlink": (
        422,
        lambda s, m: tar_gz([(SPEC, REG, _spec_bytes(s)), (MODEL, SYM, b"/etc/passwd")]),
    ),
    "hard link": (
        422,
        lambda s, m: tar_gz([(SPEC, REG, _spec_bytes(s)), (MODEL, LNK, b"head.json")]),
    ),
    "external data, absolute path": (
        422,
        lambda s, m: pack_head(s, with_external_data(m, "/etc/passwd")),
    ),
    "external data, relative path": (
        422,
        lambda s, m: pack_head(s, with_external_data(m, "../../trunk/model.onnx")),
    ),
    "archive bomb (inflates past the upload limit)": (
        422,
        lambda s, m: tar_gz([(SPEC, REG, _spec_bytes(s)), (MODEL, REG, b"\0" * (4 << 20))]),
    ),
    "oversized body": (413, lambda s, m: pack_head(s, m + np.random.bytes(UPLOAD_LIMIT))),
    "tap dtype float64": (
        422,
        lambda s, m: pack_head(s, classifier(TensorProto.DOUBLE, s.hidden_size, len(s.labels))),
    ),
    "tap width differs from the trunk": (
        422,
        lambda s, m: pack_head(s, classifier(TensorProto.FLOAT, s.hidden_size // 2, len(s.labels))),
    ),
    "output dtype float64": (
        422,
        lambda s, m: pack_head(
            s, classifier(TensorProto.FLOAT, s.hidden_size, len(s.labels), TensorProto.DOUBLE)
        ),
    ),
    "head.json with unknown schema_version": (
        422,
        lambda s, m: tar_gz(
            [
                (SPEC, REG, _spec_bytes(s).replace(b'"schema_version": 1', b'"schema_version": 2')),
                (MODEL, REG, m),
            ]
        ),
    ),
}


@pytest.fixture
def limited(repo) -> TestClient:
    app = create_app(make_settings(repo, max_upload_bytes=UPLOAD_LIMIT), CollectorRegistry())
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_archive_is_refused_with_a_4xx_and_changes_nothing(
    name, limited, admin, archives, repo
):
    status, make = CASES[name]
    spec, model = unpack_head(archives["sentiment"], 1 << 30)
    assert len(archives["sentiment"]) < UPLOAD_LIMIT  # the honest archive fits
    data = make(spec, model)
    # Neither as a new task nor as a new version of a served one.
    for replace, setup in ((False, None), (True, archives["sentiment"])):
        if setup is not None:
            assert limited.post("/admin/heads/sentiment", content=setup, headers=admin).is_success
        files, served = tree(repo), outputs(limited)
        r = limited.post(f"/admin/heads/sentiment?replace={replace}", content=data, headers=admin)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error"}
        assert tree(repo) == files
        assert outputs(limited) == served


def test_a_head_from_another_trunk_is_refused_with_409_and_changes_nothing(
    client, admin, archives, repo
):
    files, served = tree(repo), outputs(client)
    r = client.post("/admin/heads/sentiment", content=archives["foreign"], headers=admin)
    assert r.status_code == 409 and "trained against trunk" in r.json()["error"]["message"]
    assert tree(repo) == files
    assert outputs(client) == served


def test_external_data_is_named_in_the_refusal(client, admin, archives):
    spec, model = unpack_head(archives["sentiment"], 1 << 30)
    data = pack_head(spec, with_external_data(model, "/etc/passwd"))
    r = client.post("/admin/heads/sentiment", content=data, headers=admin)
    assert r.status_code == 422
    assert "/etc/passwd" in r.json()["error"]["message"]
    assert "self-contained" in r.json()["error"]["message"]
