"""Training on tiny real models and tiny user files: strategies, caching, alignment, archives."""

from __future__ import annotations

import copy
import json
import random
import tarfile

import pytest
import torch

from multitask_serve.cli import main as mts
from multitask_serve.export.encoder import Encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, top_layers
from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.types import Kind
from multitask_serve.training.data import TokenExample, load_dataset
from multitask_serve.training.features import (
    IGNORE,
    FeatureStore,
    encode_tokens,
    rust_tokenizer,
)
from multitask_serve.training.progressive import choose_depth
from multitask_serve.training.report import ReportTask, scenario_three
from multitask_serve.training.strategies import strategy
from multitask_serve.training.train import TrainConfig, export_run, train


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory):
    rng = random.Random(0)
    good = ["good", "great", "happy", "love"]
    bad = ["bad", "awful", "sad", "hate"]
    filler = ["the", "film", "music", "show", "was", "is", "this", "match"]
    lines = ["text,label"]
    for i in range(240):
        label = "pos" if i % 2 else "neg"
        words = [*rng.sample(filler, 3), rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)} {i},{label}")
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ner_conll(tmp_path_factory):
    rng = random.Random(1)
    people, places = ["john", "mary"], ["paris", "london"]
    sentences = []
    for i in range(80):
        person, place = rng.choice(people), rng.choice(places)
        sentences.append(f"{person}\tB-PER\nsaw\tO\n{place}\tB-LOC\n{i}\tO\n")
    path = tmp_path_factory.mktemp("data") / "ner.conll"
    path.write_text("\n".join(sentences))
    return path


def config(data, strategy_name, **kw) -> TrainConfig:
    return TrainConfig(
        task="t", data=str(data), strategy=strategy_name, max_length=32, batch_size=16, **kw
    )


def test_strategies_only_set_requires_grad(tiny_encoder: Encoder):
    L = tiny_encoder.num_layers
    for name, trained_layers in [("head-only", 0), ("top-2", 2), ("full", L)]:
        strat = strategy(name)
        head = Head(
            Kind.SEQUENCE_CLASSIFICATION,
            tiny_encoder.hidden_size,
            2,
            top_layers(tiny_encoder, strat.owned(L)),
        )
        strat.apply(head, L)
        assert all(p.requires_grad for p in head.classifier.parameters())
        trainable = [any(p.requires_grad for p in layer.parameters()) for layer in head.layers]
        assert sum(trainable) == trained_layers
        assert trainable == sorted(trainable)  # the trainable ones are the top ones
    assert strategy("top-5").owned(L) == 5
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy("bottom-2")


def test_training_is_deterministic_for_a_seed_and_learns(tiny_encoder, sentiment_csv):
    fast = {"epochs": 8, "layer_lr": 1e-3, "head_lr": 1e-2}
    a = train(config(sentiment_csv, "top-1", **fast), tiny_encoder)
    b = train(config(sentiment_csv, "top-1", **fast), tiny_encoder)
    assert a.test == b.test and a.history == b.history
    for pa, pb in zip(a.head.state_dict().values(), b.head.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    c = train(config(sentiment_csv, "top-1", seed=1, **fast), tiny_encoder)
    assert c.history != a.history
    assert a.test["accuracy"] >= 0.8, a.history


def test_bf16_training_learns_and_leaves_an_fp32_head(tiny_encoder, sentiment_csv):
    fast = {"epochs": 8, "layer_lr": 1e-3, "head_lr": 1e-2}
    fp32 = train(config(sentiment_csv, "top-1", **fast), tiny_encoder)
    bf16 = train(config(sentiment_csv, "top-1", mixed_precision="bf16", **fast), tiny_encoder)
    assert bf16.history != fp32.history  # the forward pass really ran in bfloat16
    assert bf16.test["accuracy"] >= 0.8, bf16.history
    assert all(p.dtype == torch.float32 for p in bf16.head.state_dict().values())
    with pytest.raises(ValueError, match="unknown mixed precision"):
        train(config(sentiment_csv, "top-1", mixed_precision="fp16"), tiny_encoder)


def test_frozen_part_runs_once_per_example_not_once_per_epoch(tiny_encoder, sentiment_csv):
    calls = []
    hook = tiny_encoder.model.embeddings.register_forward_hook(
        lambda m, i, o: calls.append(o.shape[0])
    )
    try:
        result = train(config(sentiment_csv, "head-only", epochs=5), tiny_encoder)
    finally:
        hook.remove()
    examples = sum(result.data[k] for k in ("train", "validation", "test"))
    assert sum(calls) == examples  # every example embedded exactly once, over 5 epochs


def test_runs_sharing_a_feature_store_compute_each_tap_once_and_learn_the_same(
    tiny_encoder, sentiment_csv, tmp_path
):
    """mts report's seeds and strategies read a task's frozen taps back from disk: the same
    results as computing them, each (split, tap) run through the trunk once, the time still
    counted per run."""
    store = FeatureStore(tmp_path)
    calls: list[int] = []
    hook = tiny_encoder.model.embeddings.register_forward_hook(
        lambda m, i, o: calls.append(o.shape[0])
    )
    runs = [("top-1", 0), ("top-1", 1), ("top-2", 0), ("progressive", 0)]
    try:
        shared = [
            train(config(sentiment_csv, s, seed=seed, epochs=2), tiny_encoder, store=store)
            for s, seed in runs
        ]
        with_store = sum(calls)
        alone = [
            train(config(sentiment_csv, s, seed=seed, epochs=2), tiny_encoder) for s, seed in runs
        ]
    finally:
        hook.remove()
    for a, b in zip(shared, alone, strict=True):
        assert a.test == b.test and a.history == b.history and a.depth_curve == b.depth_curve
    sizes = {k: shared[0].data[k] for k in ("train", "validation", "test")}
    layers = tiny_encoder.num_layers
    # What each run reads: top-k its three splits at tap L - k; progressive train and validation
    # at every depth it tried, and test at the depth it serves.
    reads = [
        [(p, r.branch_layer) for p in sizes]
        if not r.depth_curve
        else [(p, layers - c["depth"]) for c in r.depth_curve for p in ("train", "validation")]
        + [("test", r.branch_layer)]
        for r in shared
    ]
    once = {pair for run in reads for pair in run}
    assert with_store == sum(sizes[p] for p, _ in once)
    assert sum(calls) - with_store == sum(sizes[p] for run in reads for p, _ in run)
    assert store.hits == sum(len(run) for run in reads) - len(once)
    # Per-run time still counts the taps read back at what computing them took.
    assert store.computed_seconds > store.loaded_seconds >= 0


def test_per_task_copies_leave_the_trunk_untouched_and_shared_layers_do_not(
    tiny_encoder, sentiment_csv
):
    before = copy.deepcopy(tiny_encoder.model.state_dict())
    train(config(sentiment_csv, "top-2", epochs=1), tiny_encoder)
    assert all(torch.equal(before[k], v) for k, v in tiny_encoder.model.state_dict().items())
    shared = Encoder(
        copy.deepcopy(tiny_encoder.model),
        tiny_encoder.tokenizer_json,
        tiny_encoder.base_model,
        tiny_encoder.max_length,
    )
    train(config(sentiment_csv, "top-2", epochs=1), shared, shared_layers=True)
    changed = [k for k, v in shared.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(".layer.4." in k or ".layer.5." in k for k in changed)


def test_progressive_searches_depth_and_serves_the_shallowest_within_tolerance(
    tiny_encoder, exporter, sentiment_csv
):
    result = train(
        config(sentiment_csv, "progressive", epochs=2, patience=1, max_depth=4), tiny_encoder
    )
    curve = result.depth_curve
    assert [p["depth"] for p in curve] == [1, 2, 3, 4]
    assert [p["branch_layer"] for p in curve] == [5, 4, 3, 2]
    # Each depth trained with exactly that many layers unfrozen, in order, deeper over time.
    assert [h["trainable_layers"] for h in result.history] == sorted(
        h["trainable_layers"] for h in result.history
    )
    assert {h["trainable_layers"] for h in result.history} == {1, 2, 3, 4}
    depth = choose_depth(curve, 0.01)
    best = max(p["score"] for p in curve)
    assert all(p["score"] < best - 0.01 for p in curve if p["depth"] < depth)
    assert result.branch_layer == tiny_encoder.num_layers - depth
    assert len(result.head.layers) == depth
    assert result.validation["macro_f1"] == next(p["score"] for p in curve if p["depth"] == depth)
    spec, _ = export_run(result, exporter)
    assert spec.branch_layer == result.branch_layer
    assert spec.training["depth_curve"] == curve


def test_choose_depth_takes_the_shallowest_within_tolerance_of_the_best():
    curve = [{"depth": d, "score": s} for d, s in [(1, 0.70), (2, 0.795), (3, 0.80), (4, 0.79)]]
    assert choose_depth(curve, 0.01) == 2
    assert choose_depth(curve, 0.0) == 3
    assert choose_depth(curve, 0.2) == 1


def test_early_stopping_ends_training_after_patience_epochs_without_a_gain(
    tiny_encoder, sentiment_csv
):
    # A zero learning rate never improves on the first epoch: it stops after 1 + patience.
    frozen = {"layer_lr": 0.0, "head_lr": 0.0, "epochs": 10}
    result = train(config(sentiment_csv, "top-1", patience=2, **frozen), tiny_encoder)
    assert result.epochs_run == 3
    result = train(config(sentiment_csv, "top-1", patience=None, **frozen), tiny_encoder)
    assert result.epochs_run == 10


def test_word_pieces_align_to_words_as_the_service_decodes_them(tiny_encoder):
    tokenizer = rust_tokenizer(tiny_encoder.tokenizer_json, 32)
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    example = TokenExample(tokens=("johnny", "@paris:", "ok"), tags=("B-PER", "B-LOC", "O"))
    enc = encode_tokens(tokenizer, [example], labels)
    pieces = tokenizer.encode("johnny @paris: ok").tokens
    tagged = {pieces[i]: labels[t] for i, t in enumerate(enc.labels[0]) if t != IGNORE}
    # johnny -> john ##n ##y: only its first piece is labelled; "@paris:" splits into the
    # pre-tokenizer words "@", "paris", ":" -> B-LOC, I-LOC, I-LOC; ok -> o ##k.
    assert pieces == ["[CLS]", "john", "##n", "##y", "@", "paris", ":", "o", "##k", "[SEP]"]
    assert tagged == {"john": "B-PER", "@": "B-LOC", "paris": "I-LOC", ":": "I-LOC", "o": "O"}
    assert [pieces[i] for i in enc.word_tokens[0]] == ["john", "@", "o"]


def test_ner_head_trains_exports_and_records_its_provenance(
    tiny_encoder, exporter: HeadExporter, ner_conll
):
    result = train(config(ner_conll, "top-1", epochs=8, layer_lr=1e-3, head_lr=1e-2), tiny_encoder)
    assert result.kind is Kind.TOKEN_CLASSIFICATION
    assert result.test["entity_f1"] > 0.5, result.history
    spec, _ = export_run(result, exporter)
    assert spec.kind is Kind.TOKEN_CLASSIFICATION and spec.branch_layer == 5
    assert spec.training["strategy"] == "top-1" and spec.training["seed"] == 0
    assert spec.training["config"]["epochs"] == 8
    assert spec.training["validation"]["entity_f1"] == result.validation["entity_f1"]
    assert spec.labels[0] == "O"


def test_scenario_three_private_copies_change_nothing_shared_layers_move_task_a(
    tiny_encoder, sentiment_csv, ner_conll
):
    a = ReportTask(str(sentiment_csv), max_length=32, epochs=3)
    b = ReportTask(str(ner_conll), max_length=32, epochs=3, layer_lr=5e-3, head_lr=1e-2)
    s3 = scenario_three(tiny_encoder, a, b, k=2)
    copies, shared = s3["copies"], s3["shared"]
    assert copies["a_logits_max_abs_change"] == 0.0
    assert copies["a_predictions_changed"] == 0.0
    assert copies["a_after"] == s3["a_before"]
    assert copies["a_change"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "within_noise": True}
    change = shared["a_change"]
    assert change["low"] <= change["difference"] <= change["high"]
    assert change["difference"] == pytest.approx(
        shared["a_after"]["macro_f1"] - s3["a_before"]["macro_f1"], abs=1e-12
    )
    assert shared["a_logits_max_abs_change"] > 0.0
    assert 0.0 <= shared["a_predictions_changed"] <= 1.0
    assert "entity_f1" in copies["b_test"] and "entity_f1" in shared["b_test"]


def test_mts_eval_scores_an_archive_on_a_user_file_as_training_scored_it(
    tiny_encoder, exporter, built_repo, sentiment_csv, ner_conll, tmp_path
):
    fast = {"epochs": 4, "layer_lr": 1e-3, "head_lr": 1e-2}
    result = train(config(sentiment_csv, "top-1", **fast), tiny_encoder)
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(pack_head(*export_run(result, exporter)))
    split = load_dataset(str(sentiment_csv), seed=0)
    test_file = tmp_path / "test.csv"
    test_file.write_text("label,text\n" + "".join(f"{e.label},{e.text}\n" for e in split.test))
    out = tmp_path / "eval"
    argv = ["eval", "--head", str(archive), "--data", str(test_file), "--repo", str(built_repo)]
    assert mts([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The ONNX graphs agree with the PyTorch head that training scored on the same examples.
    assert metrics["overall"]["accuracy"] == pytest.approx(result.test["accuracy"], abs=1e-9)
    assert metrics["overall"]["macro_f1"] == pytest.approx(result.test["macro_f1"], abs=1e-9)
    matrix = metrics["confusion"]
    assert sum(map(sum, matrix)) == len(split.test)
    assert sum(matrix[i][i] for i in range(len(matrix))) / len(split.test) == pytest.approx(
        metrics["overall"]["accuracy"]
    )
    per = metrics["per_label"]
    assert set(per) == {"neg", "pos"}
    assert sum(m["support"] for m in per.values()) == len(split.test)
    mean_f1 = sum(m["f1"] for m in per.values()) / 2
    assert mean_f1 == pytest.approx(metrics["overall"]["macro_f1"])
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ner = train(config(ner_conll, "top-1", **fast), tiny_encoder)
    ner_archive = tmp_path / "n.tar.gz"
    ner_archive.write_bytes(pack_head(*export_run(ner, exporter)))
    argv = ["eval", "--head", str(ner_archive), "--data", str(ner_conll), "--repo", str(built_repo)]
    assert mts([*argv, "--out", str(tmp_path / "ner")]) == 0
    ner_metrics = json.loads((tmp_path / "ner" / "metrics.json").read_text())
    assert set(ner_metrics["per_label"]) <= {"PER", "LOC"}
    assert ner_metrics["confusion_labels"] == ["O", "LOC", "PER"]
    assert "entity_f1" in ner_metrics["overall"]
    # A file of the wrong kind for the head is a clear error, not a traceback.
    with pytest.raises(SystemExit, match=r"token-classification head reads a \.conll"):
        mts(
            [
                "eval",
                "--head",
                str(ner_archive),
                "--data",
                str(test_file),
                "--repo",
                str(built_repo),
            ]
        )


def test_mts_train_flags_reach_the_run_and_head_json(
    tiny_encoder_dir, built_repo, sentiment_csv, tmp_path
):
    data = tmp_path / "renamed.csv"
    data.write_text(sentiment_csv.read_text().replace("text,label", "sentence,polarity", 1))
    out = tmp_path / "h.tar.gz"
    argv = ["train", "--task", "r", "--data", str(data), "--repo", str(built_repo)]
    argv += ["--encoder", str(tiny_encoder_dir), "--out", str(out), "--strategy", "top-2"]
    argv += ["--text-column", "sentence", "--label-column", "polarity", "--epochs", "2"]
    argv += ["--lr-decay", "0.5", "--warmup", "0", "--schedule", "constant", "--grad-clip", "none"]
    argv += ["--class-weights", "--patience", "none", "--pooling", "cls", "--max-length", "24"]
    argv += ["--mixed-precision", "bf16"]
    assert mts(argv) == 0
    with tarfile.open(out) as tar:
        spec = json.loads(tar.extractfile("head.json").read())
    recorded = spec["training"]["config"]
    assert recorded["lr_decay"] == 0.5 and recorded["warmup"] == 0.0
    assert recorded["schedule"] == "constant" and recorded["grad_clip"] is None
    assert recorded["class_weights"] is True and recorded["patience"] is None
    assert recorded["text_column"] == "sentence" and recorded["max_length"] == 24
    assert recorded["mixed_precision"] == "bf16"
    assert spec["pooling"] == "cls" and spec["training"]["epochs_run"] == 2
    with pytest.raises(SystemExit, match="expected a header with a 'text' column"):
        mts([a for a in argv if a not in ("--text-column", "sentence")])
