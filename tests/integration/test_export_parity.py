"""Every exported graph reproduces its PyTorch module; a branched head reproduces the full model."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, mean_pool
from multitask_serve.export.onnx_export import HEAD_TOLERANCE, TRUNK_TOLERANCE
from multitask_serve.export.samples import encode
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import Kind, trunk_fingerprint
from tests.factories import NER_LABELS, TINY_LAYERS, random_head


def test_trunk_parity_is_within_tolerance_and_recorded(built_repo, tiny_encoder):
    repo = ModelRepository(built_repo)
    spec = repo.read_trunk_spec()
    print(f"trunk parity max abs diff: {spec.parity_max_abs_diff:.2e} (tol {TRUNK_TOLERANCE})")
    assert 0 <= spec.parity_max_abs_diff <= TRUNK_TOLERANCE
    assert spec.num_layers == TINY_LAYERS
    assert spec.fingerprint == trunk_fingerprint(
        repo.trunk_model_path.read_bytes(), repo.tokenizer_path.read_bytes()
    )


def test_every_built_head_records_parity_and_the_trunk_fingerprint(built_repo):
    repo = ModelRepository(built_repo)
    trunk = repo.read_trunk_spec()
    kinds = {}
    for task in repo.tasks():
        head = repo.read_head(task)
        kinds[head.spec.kind] = head.spec.parity_max_abs_diff
        assert head.spec.trunk_fingerprint == trunk.fingerprint
        assert head.spec.parity_max_abs_diff <= HEAD_TOLERANCE
    assert set(kinds) == {Kind.EMBEDDING, Kind.ZERO_SHOT}
    print("parity per kind:", {str(k): f"{v:.2e}" for k, v in kinds.items()})


def test_trained_head_kinds_export_within_tolerance(exporter: HeadExporter):
    figures = {}
    for kind, labels, k in [
        (Kind.SEQUENCE_CLASSIFICATION, ("a", "b", "c"), 0),
        (Kind.SEQUENCE_CLASSIFICATION, ("a", "b"), 3),
        (Kind.TOKEN_CLASSIFICATION, NER_LABELS, 1),
    ]:
        head = random_head(exporter.encoder, kind, len(labels), k, seed=7)
        spec, _ = exporter.classification("t", head, labels)
        assert spec.branch_layer == TINY_LAYERS - k
        assert spec.parity_max_abs_diff <= HEAD_TOLERANCE
        figures[f"{kind} top-{k}"] = spec.parity_max_abs_diff
    print("trained head parity:", {k: f"{v:.2e}" for k, v in figures.items()})


class FineTuned(nn.Module):
    """The model a user would fine-tune: the library's whole encoder, then pool and classify."""

    def __init__(self, model: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.model, self.classifier = model, classifier

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.classifier(mean_pool(hidden, attention_mask))


def test_head_owning_top_two_layers_fed_tap_four_reproduces_the_full_model(
    built_repo, tiny_encoder: Encoder, exporter: HeadExporter
):
    # Fine-tune stand-in: the top two layers move, the bottom four stay the pretrained ones.
    torch.manual_seed(11)
    tuned = copy.deepcopy(tiny_encoder.model)
    with torch.no_grad():
        for layer in tuned.encoder.layer[TINY_LAYERS - 2 :]:
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
    classifier = nn.Linear(tiny_encoder.hidden_size, 3)
    full = FineTuned(tuned, classifier).eval()

    head = Head(
        Kind.SEQUENCE_CLASSIFICATION,
        tiny_encoder.hidden_size,
        3,
        nn.ModuleList(copy.deepcopy(tuned.encoder.layer[TINY_LAYERS - 2 :])),
    )
    head.classifier = copy.deepcopy(classifier)
    spec, head_onnx = exporter.classification("topic", head, ("x", "y", "z"))
    assert spec.branch_layer == 4

    repo = ModelRepository(built_repo)
    trunk = ort.InferenceSession(str(repo.trunk_model_path), providers=["CPUExecutionProvider"])
    branch = ort.InferenceSession(head_onnx, providers=["CPUExecutionProvider"])
    texts = ["the bank rates", "john scored a great goal in the final match at paris", "ok"]
    feeds = encode(exporter.tokenizer, texts, with_token_types=True)
    tap4 = trunk.run(["tap_4"], {k: v.numpy() for k, v in feeds.items()})[0]
    served = branch.run(
        ["logits"], {"hidden": tap4, "attention_mask": feeds["attention_mask"].numpy()}
    )[0]
    with torch.no_grad():
        expected = full(**feeds).numpy()
    diff = float(np.max(np.abs(served - expected)))
    print(f"trunk tap 4 + top-2 head vs full PyTorch model: max abs diff {diff:.2e}")
    assert diff <= HEAD_TOLERANCE
    # And the untouched trunk alone would not give these logits: the head's own layers matter.
    untuned = FineTuned(tiny_encoder.model, classifier).eval()
    with torch.no_grad():
        assert np.max(np.abs(untuned(**feeds).numpy() - expected)) > 100 * HEAD_TOLERANCE


def test_trunk_export_is_deterministic_and_free_of_local_paths(tiny_encoder, built_repo):
    from multitask_serve.export.trunk import export_trunk

    spec, model = export_trunk(tiny_encoder)
    assert spec.fingerprint == ModelRepository(built_repo).read_trunk_spec().fingerprint
    assert b"site-packages" not in model and b".py" not in model
