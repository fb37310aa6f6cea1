"""Runtimes: taps kept where the trunk ran (IO binding), the fp16 trunk, device configuration.

The bound path is the GPU's; ONNX Runtime binds CPU tensors the same way, so it runs here.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from multitask_serve.cli import main
from multitask_serve.modelrepo.archive import unpack_head
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import tap_name
from multitask_serve.service.app import create_app
from multitask_serve.service.sessions import CPU, Runtime, RuntimeUnavailable
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.service.types import Job
from tests.conftest import make_settings

TEXTS = ["Shares rallied after the bank's results.", "The striker scored twice.", "ok", "Hi!"]


def add_archives(repo, archives, names):
    store = ModelRepository(repo)
    for name in names:
        store.add_head(*unpack_head(archives[name], 1 << 30))


def serve_mixed(repo, **overrides):
    """One micro-batch where every head reads a different subset of the rows."""
    state = create_app(make_settings(repo, **overrides), CollectorRegistry()).state.services
    engine = state.engine
    heads = state.registry.loaded(["embed", "topic-zs", "sentiment", "topic", "ner"])
    jobs = [
        Job({t: heads[t] for t in ("sentiment", "ner")}, TEXTS[:2]),
        Job({t: heads[t] for t in ("topic", "embed")}, TEXTS[2:]),
        Job({t: heads[t] for t in ("topic-zs", "sentiment", "topic")}, TEXTS[1:3]),
    ]
    return [
        {task: result.outputs for task, result in done.results.items()}
        for done in engine.predict_many(jobs)
    ]


def test_bound_taps_give_the_same_outputs_as_host_arrays(repo, archives):
    add_archives(repo, archives, ["sentiment", "topic", "ner"])
    host = serve_mixed(repo, io_binding=False)
    bound = serve_mixed(repo, io_binding=True)
    # Same kernels on the same inputs; picking rows on the device is a copy, as numpy's is.
    assert json.dumps(bound, sort_keys=True) == json.dumps(host, sort_keys=True)


def test_bound_trunk_returns_values_that_stay_where_it_ran(built_repo):
    repo = ModelRepository(built_repo)
    spec = repo.read_trunk_spec()
    ids = np.array([[2, 40, 41, 3]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in spec.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    taps = [tap_name(0), tap_name(spec.num_layers)]
    host = TrunkSession(repo.trunk_model_path, CPU).run(feeds, taps)
    bound = TrunkSession(repo.trunk_model_path, Runtime(io_binding=True)).run(feeds, taps)
    for name in taps:
        assert isinstance(bound[name], ort.OrtValue)
        np.testing.assert_array_equal(bound[name].numpy(), host[name])


def test_fp16_trunk_keeps_its_signature_and_stays_close(built_repo):
    repo = ModelRepository(built_repo)
    spec = repo.read_trunk_spec()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 150, size=(3, 12), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in spec.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    taps = [tap_name(i) for i in range(spec.num_layers + 1)]
    fp32 = TrunkSession(repo.trunk_model_path).run(feeds, taps)
    half = TrunkSession(repo.trunk_model_path, precision="fp16")
    assert half.input_names == TrunkSession(repo.trunk_model_path).input_names
    fp16 = half.run(feeds, taps)
    worst = 0.0
    for name in taps:
        assert fp16[name].dtype == np.float32  # heads keep reading float32 taps
        scale = float(np.abs(fp32[name]).max())
        worst = max(worst, float(np.abs(fp16[name] - fp32[name]).max()) / scale)
    print(f"fp16 trunk vs fp32, all taps: max abs diff / max abs value {worst:.2e}")
    # fp16 keeps 11 significant bits (~5e-4 relative); layers compound it a little.
    assert 0 < worst < 1e-2


def test_a_session_made_from_bytes_does_not_keep_them(built_repo):
    """ORT's Python wrapper would hold the serialised graph for the session's life (a second
    copy of the trunk's weights); the runtime lets it go."""
    model = (built_repo / "trunk" / "model.onnx").read_bytes()
    session = CPU.session(model)
    assert getattr(session, "_model_bytes", None) is None
    feeds = {i.name: np.ones((1, 3), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feeds)[0].shape[:2] == (1, 3)  # still runs


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValidationError, match="needs MTS_DEVICE=cuda"):
        make_settings(tmp_path, trunk_precision="fp16")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this ORT has CUDA"
)
def test_cuda_without_the_gpu_build_is_a_clear_startup_error(built_repo, monkeypatch, capsys):
    with pytest.raises(RuntimeUnavailable, match="install the gpu extra"):
        create_app(make_settings(built_repo, device="cuda"), CollectorRegistry())
    monkeypatch.setenv("MTS_DEVICE", "cuda")
    assert main(["serve", "--repo", str(built_repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mts serve: MTS_DEVICE=cuda") and "Traceback" not in err
