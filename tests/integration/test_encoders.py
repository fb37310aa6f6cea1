"""Encoders: which families load as a trunk, which are refused, the longest input each can serve,
and each supported family end to end (export, top-2 training, serving) at a small hidden size: a
12-layer bert-base-shaped BERT, a RoBERTa and an ELECTRA-small-shaped ELECTRA."""

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
from tests.factories import tiny_tokenizer

# Config overrides per family. RoBERTa: one token type, position ids numbered from padding_idx + 1
# (the tiny tokenizer pads with id 0). ELECTRA as ELECTRA-small: embeddings narrower than the
# layers, projected up to them; as ELECTRA-base: the same width, no projection.
FAMILIES = {
    "bert": (BertConfig, BertModel, {}),
    "roberta": (RobertaConfig, RobertaModel, {"pad_token_id": 0, "type_vocab_size": 1}),
    "electra": (ElectraConfig, ElectraModel, {"embedding_size": 16}),
    "electra-base": (ElectraConfig, ElectraModel, {"embedding_size": 32}),
    "deberta-v2": (DebertaV2Config, DebertaV2Model, {}),
    "mpnet": (MPNetConfig, MPNetModel, {}),
}
# What save_pretrained records for a tokenizer that states no length limit (many checkpoints).
NO_LIMIT = int(1e30)


def write_family(
    directory: Path, family: str, layers: int = 2, positions: int = 128, token_limit: int = 64
) -> Path:
    config_cls, model_cls, extra = FAMILIES[family]
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = token_limit
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        **extra,
    )
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "electra-base"])
def test_bert_roberta_and_electra_load_and_their_taps_match_their_own_forward(tmp_path, family):
    encoder = load_encoder(write_family(tmp_path / family, family))
    assert encoder.num_layers == 2 and encoder.hidden_size == 32


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_encoders_whose_layers_need_more_inputs_are_refused_at_load_with_a_reason(tmp_path, family):
    with pytest.raises(EncoderError, match=r"is not supported: .*Supported: encoders whose"):
        load_encoder(write_family(tmp_path / family, family))


@pytest.mark.parametrize(
    ("family", "positions", "served_length"),
    [("bert", 64, 64), ("roberta", 64, 63), ("electra", 64, 64)],
)
def test_the_longest_input_served_fits_the_position_table(
    tmp_path, family, positions, served_length
):
    # With no limit from the tokenizer, the position table sets it; RoBERTa numbers positions from
    # padding_idx + 1, so one position fewer fits (roberta-base: 514 positions, 512 tokens).
    directory = write_family(tmp_path / family, family, positions=positions, token_limit=NO_LIMIT)
    encoder = load_encoder(directory)
    assert encoder.max_length == served_length
    tokenizer = tokenizer_from_json(encoder.tokenizer_json, encoder.max_length)
    feeds = encode(tokenizer, ["good " * 200], encoder.uses_token_type_ids)
    assert feeds["input_ids"].shape[1] == served_length
    with torch.no_grad():
        encoder.model(**feeds)  # an index past the position table raises here


# (family, layers, position table): the 12 layers of bert-base at a small width, and the other
# supported families at 3 layers (top-2 then branches above a layer the trunk runs).
END_TO_END = {
    "bert-12-layers": ("bert", 12, 128),
    "roberta": ("roberta", 3, 64),
    "electra-small-shaped": ("electra", 3, 64),
}


@pytest.mark.parametrize("case", END_TO_END)
def test_each_family_exports_trains_top_2_and_serves_what_it_trained(tmp_path, case):
    family, layers, positions = END_TO_END[case]
    # No length limit from the tokenizer: serving runs to the end of the position table.
    directory = write_family(tmp_path / case, family, layers, positions, token_limit=NO_LIMIT)
    encoder = load_encoder(directory)
    assert encoder.num_layers == layers
    root = tmp_path / "repo"
    build_repository(root, encoder, {}, report=lambda _: None)
    repo = ModelRepository(root)
    trunk = repo.read_trunk_spec()
    assert trunk.num_layers == layers and len(trunk.tap_names) == layers + 1

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
    assert result.branch_layer == layers - 2 and len(result.head.layers) == 2
    spec, model = export_run(result, HeadExporter(encoder, trunk))
    assert spec.branch_layer == layers - 2
    repo.add_head(spec, model)

    texts = ["the film was great", "the film was awful", "good " * 200]
    client = TestClient(create_app(make_settings(root), CollectorRegistry()))
    with client:
        # Cut at the trunk's length, as the PyTorch reference below reads the long text.
        served = client.post("/predict/reviews", json={"inputs": texts, "truncate": True})
    assert served.status_code == 200, served.text
    # What the server answers is what the trained PyTorch head computes on the full encoder.
    tokenizer = tokenizer_from_json(encoder.tokenizer_json, trunk.max_length)
    feeds = encode(tokenizer, texts, encoder.uses_token_type_ids)
    assert feeds["input_ids"].shape[1] == trunk.max_length  # the long text fills the table
    with torch.no_grad():
        taps = encoder.model(**feeds, output_hidden_states=True).hidden_states
        probs = torch.softmax(result.head(taps[layers - 2], feeds["attention_mask"]), -1)
    for answer, row in zip(served.json()["outputs"], probs, strict=True):
        assert answer["label"] == result.labels[int(row.argmax())]
        for i, label in enumerate(result.labels):
            assert answer["scores"][label] == pytest.approx(float(row[i]), abs=1e-5)
