"""The int8 per-channel trunk against the fp32 trunk: speed side by side, and quality on the tasks.

Comparison 7 of the benchmark plan. The int8 graph is what ``mts quantize`` makes (ONNX Runtime
dynamic quantization, per-channel int8 weights); it is made here on a copy of the repository
unless the repository has one already.

- Speed: the trunk alone through the service's own session wrapper (same options as serving),
  fp32 and int8 alternating in rounds, on real texts (tweets and BBC news sentences, ~30 tokens)
  and on 128-token news passages, at batch 1, 16 and 32.
- Quality: the repository's trained heads (sentiment, topic, NER) evaluated on the test split
  they were evaluated on at build time (rebuilt from the config their head.json records), once
  through the fp32 trunk and once through the int8 trunk. The heads are the same in both runs
  and were trained on fp32 features. The fp32 row should reproduce head.json's test figures.

    .venv/bin/python bench/int8_trunk.py [--repo model-repo] [--repeats 20]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from heads_vs_models import median_time
from pipelines_vs_ours import real_texts

from multitask_serve.export.quantize import INT8, quantize_trunk
from multitask_serve.modelrepo.repository import ModelRepository, StoredHead
from multitask_serve.modelrepo.types import Kind, TrunkSpec, tap_name
from multitask_serve.service.sessions import HeadSession, Runtime
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.training.data import Split, is_token_split, load_dataset, read_topic
from multitask_serve.training.features import (
    Encoded,
    encode_texts,
    encode_tokens,
    rust_tokenizer,
)
from multitask_serve.training.train import TrainConfig, cap_eval, score

HEADLINE = {"sentiment": "macro_f1", "topic": "macro_f1", "ner": "entity_f1"}


def feeds(spec: TrunkSpec, rows: list[list[int]]) -> dict[str, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in out.items() if k in spec.input_names}


def speed(repo: ModelRepository, trunks: dict[str, TrunkSession], repeats: int) -> None:
    spec = repo.read_trunk_spec()
    tokenizer_json = repo.tokenizer_path.read_bytes()
    short = rust_tokenizer(tokenizer_json, spec.max_length).encode_batch(real_texts(64))
    passages = [e.text for e in read_topic()[0][:64]]
    long = rust_tokenizer(tokenizer_json, 128).encode_batch(passages)
    mean_short = statistics.mean(len(e.ids) for e in short)
    print("\n| texts | batch | fp32 ms | int8 ms | fp32 / int8 |")
    print("|---|---|---|---|---|")
    for label, encodings in (
        (f"real, {mean_short:.0f} tokens on average", short),
        ("news passages, 128 tokens", long),
    ):
        for batch in (1, 16, 32):
            batch_feeds = feeds(spec, [e.ids for e in encodings[:batch]])
            last = [tap_name(spec.num_layers)]
            rounds = [
                {
                    name: median_time(partial(t.run, batch_feeds, last), repeats)
                    for name, t in trunks.items()
                }
                for _ in range(3)
            ]
            fp32 = statistics.median(r["fp32"] for r in rounds)
            int8 = statistics.median(r[INT8] for r in rounds)
            print(
                f"| {label} | {batch} | {1000 * fp32:.1f} | {1000 * int8:.1f} | "
                f"{fp32 / int8:.2f}x |"
            )


def test_split(repo: ModelRepository, stored: StoredHead) -> tuple[Split[Any], Encoded]:
    """The head's build-time test split (rebuilt from its head.json config), tokenized."""
    config = TrainConfig(**stored.spec.training["config"])
    split = cap_eval(
        load_dataset(config.data, seed=config.split_seed, max_train=config.max_train),
        config.max_eval,
    )
    expected = stored.spec.training["data"]["test"]
    if len(split.test) != expected:
        raise RuntimeError(f"{stored.spec.task}: test split has {len(split.test)}, not {expected}")
    tokenizer = rust_tokenizer(repo.tokenizer_path.read_bytes(), config.max_length)
    encode = encode_tokens if is_token_split(split) else encode_texts
    return split, encode(tokenizer, split.test, split.labels)


def evaluate_head(
    repo: ModelRepository, stored: StoredHead, trunk: TrunkSession, spec: TrunkSpec
) -> dict[str, float]:
    """The head's test metrics with the taps from ``trunk``, on its build-time test split."""
    split, encoded = test_split(repo, stored)
    head = HeadSession(stored.model_path.read_bytes(), stored.spec.output_name, spec.hidden_size)
    tap = tap_name(stored.spec.branch_layer)
    logits: list[Any] = []
    for start in range(0, len(encoded.ids), 32):
        rows = encoded.ids[start : start + 32]
        batch = feeds(spec, rows)
        out = head.run(trunk.run(batch, [tap])[tap], batch["attention_mask"])
        for i, row in enumerate(rows):
            logits.append(
                out[i, : len(row)] if stored.spec.kind is Kind.TOKEN_CLASSIFICATION else out[i]
            )
    return score(stored.spec.kind, logits, split.test, split.labels, encoded.word_tokens)


def quality(repo: ModelRepository, trunks: dict[str, TrunkSession]) -> None:
    spec = repo.read_trunk_spec()
    print(
        "\n| task (head) | test examples | metric | build-time (head.json) | fp32 trunk | "
        "int8 trunk | change (points) |"
    )
    print("|---|---|---|---|---|---|---|")
    for task in HEADLINE:
        stored = repo.read_head(task)
        got = {name: evaluate_head(repo, stored, t, spec) for name, t in trunks.items()}
        recorded = stored.spec.training["test"]
        metrics = ("accuracy", "macro_f1") if task != "ner" else ("entity_f1",)
        for metric in metrics:
            fp32, int8 = got["fp32"][metric], got[INT8][metric]
            print(
                f"| {task} ({stored.spec.training['strategy']}) | "
                f"{stored.spec.training['data']['test']} | {metric} | {recorded[metric]:.4f} | "
                f"{fp32:.4f} | {int8:.4f} | {100 * (int8 - fp32):+.2f} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all cores)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        repo = ModelRepository(args.repo)
        if INT8 not in repo.read_trunk_spec().variants:
            shutil.copytree(args.repo, Path(tmp) / "repo")
            repo = ModelRepository(Path(tmp) / "repo")
            quantize_trunk(repo)
        variant = repo.read_trunk_spec().variants[INT8]
        sizes = {p: repo.trunk_variant_path(p).stat().st_size / 2**20 for p in ("fp32", INT8)}
        print(
            f"int8 trunk: {variant.method}; taps vs fp32 on sample texts: max abs diff "
            f"{variant.max_abs_diff:.3g}, min cosine {variant.min_cosine:.4f}; graph "
            f"{sizes['fp32']:.1f} MiB fp32, {sizes[INT8]:.1f} MiB int8; ORT threads "
            f"{args.threads or 'all cores'}"
        )
        trunks = {
            p: TrunkSession(repo.trunk_variant_path(p), Runtime(threads=args.threads))
            for p in ("fp32", INT8)
        }
        speed(repo, trunks, args.repeats)
        quality(repo, trunks)


if __name__ == "__main__":
    main()
