"""Encoders: which families load as a trunk, which are refused, and a 12-layer bert-base-shaped
encoder end to end (export, top-2 training, serving) at a small hidden size."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from transformers import (
    BertConfig,
    BertModel,
    DebertaV2Config,
    DebertaV2Model,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
)

from multitask_serve.export.build import build_repository
from multitask_serve.export.encoder import EncoderError, load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.samples import encode, tokenizer_from_json
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.service.app import create_app
from multitask_serve.training.train import TrainConfig, export_run, train
from tests.conftest import make_settings
from tests.factories import tiny_tokenizer, write_tiny_encoder

FAMILIES = {
    "bert": (BertConfig, BertModel, {}),
    "roberta": (RobertaConfig, RobertaModel, {"pad_token_id": 0}),
    "electra": (ElectraConfig, ElectraModel, {"embedding_size": 32}),
    "deberta-v2": (DebertaV2Config, DebertaV2Model, {}),
    "mpnet": (MPNetConfig, MPNetModel, {}),
}


def write_family(directory: Path, family: str) -> Path:
    config_cls, model_cls, extra = FAMILIES[family]
    tokenizer = tiny_tokenizer()
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_bert_roberta_and_electra_load_and_their_taps_match_their_own_forward(tmp_path, family):
    encoder = load_encoder(write_family(tmp_path / family, family))
    assert encoder.num_layers == 2 and encoder.hidden_size == 32


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_encoders_whose_layers_need_more_inputs_are_refused_at_load_with_a_reason(tmp_path, family):
    with pytest.raises(EncoderError, match=r"is not supported: .*Supported: encoders whose"):
        load_encoder(write_family(tmp_path / family, family))


def test_a_12_layer_encoder_exports_trains_top_2_and_serves_what_it_trained(tmp_path):
    encoder = load_encoder(write_tiny_encoder(tmp_path / "deep", seed=3, layers=12))
    assert encoder.num_layers == 12
    root = tmp_path / "repo"
    build_repository(root, encoder, {}, report=lambda _: None)
    repo = ModelRepository(root)
    trunk = repo.read_trunk_spec()
    assert trunk.num_layers == 12 and len(trunk.tap_names) == 13

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(160):
        label, word = (
            ("pos", rng.choice(["good", "great", "love"]))
            if i % 2
            else (
                "neg",
                rng.choice(["bad", "awful", "hate"]),
            )
        )
        rows.append(f"the film was {word} {i},{label}")
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n")
    config = TrainConfig(
        task="reviews",
        data=str(data),
        strategy="top-2",
        epochs=3,
        max_length=16,
        layer_lr=1e-3,
        head_lr=1e-2,
    )
    result = train(config, encoder)
    assert result.branch_layer == 10 and len(result.head.layers) == 2
    spec, model = export_run(result, HeadExporter(encoder, trunk))
    assert spec.branch_layer == 10
    repo.add_head(spec, model)

    texts = ["the film was great", "the film was awful"]
    client = TestClient(create_app(make_settings(root), CollectorRegistry()))
    with client:
        served = client.post("/predict/reviews", json={"inputs": texts})
    assert served.status_code == 200, served.text
    # What the server answers is what the trained PyTorch head computes on the full encoder.
    feeds = encode(tokenizer_from_json(encoder.tokenizer_json, 16), texts, True)
    with torch.no_grad():
        taps = encoder.model(**feeds, output_hidden_states=True).hidden_states
        probs = torch.softmax(result.head(taps[10], feeds["attention_mask"]), -1)
    for answer, row in zip(served.json()["outputs"], probs, strict=True):
        assert answer["label"] == result.labels[int(row.argmax())]
        for i, label in enumerate(result.labels):
            assert answer["scores"][label] == pytest.approx(float(row[i]), abs=1e-5)
