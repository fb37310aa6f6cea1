"""The int8 trunk against the fp32 trunk: speed side by side, quality, batch dependence.

Comparison 7 of the benchmark plan. The int8 graph is what ``mts quantize`` makes (per-channel
int8 weights, activations scaled per row at run time: ``export/per_row.py``); it is made here on
a copy of the repository. ``int8-per-batch`` is the method it replaced, ONNX Runtime's
``quantize_dynamic`` (per-channel weights, activations scaled per batch), and ``int8-u8s8`` the
per-row graph as it was stored before its weights became uint8 (int8 weights: ONNX Runtime's
u8 x s8 kernel, whose 16-bit pair sums saturate on x86 without VNNI), measured beside it.

- Speed: the trunk alone through the service's own session wrapper (same options as serving),
  fp32 and int8 alternating in rounds, on real texts (tweets and BBC news sentences, ~30 tokens)
  and on 128-token news passages, at batch 1, 16 and 32.
- Quality: the repository's trained heads (sentiment, topic, NER) evaluated on the test split
  they were evaluated on at build time (rebuilt from the config their head.json records), once
  through the fp32 trunk and once through the int8 trunk. The heads are the same in both runs
  and were trained on fp32 features. The fp32 row should reproduce head.json's test figures.
- Batch dependence: the first ``--alone`` test examples of each task sent alone (trunk and head
  on that text, unpadded) against the same text in its padded batch of 32.

    .venv/bin/python -m bench.int8_trunk [--repo model-repo] [--repeats 20] [--rounds 3]
        [--out bench/results/int8-trunk.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from bench.heads_vs_models import median_time
from bench.pipelines_vs_ours import real_texts
from multitask_serve.export.per_row import with_int8_weights
from multitask_serve.export.quantize import INT8, quantize_trunk, softmax
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
from support.machine import machine
from support.results import write_results
from support.stats import summary

PER_BATCH = "int8-per-batch"
U8S8 = "int8-u8s8"
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


def per_batch(model: bytes) -> bytes:
    """The replaced method: ONNX Runtime's dynamic quantization, activations scaled per batch."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
        return target.read_bytes()


def speed(
    repo: ModelRepository, trunks: dict[str, TrunkSession], repeats: int, rounds: int
) -> dict[str, Any]:
    """ms per trunk run (last tap), every graph in every round, the order rotating."""
    spec = repo.read_trunk_spec()
    tokenizer_json = repo.tokenizer_path.read_bytes()
    short = rust_tokenizer(tokenizer_json, spec.max_length).encode_batch(real_texts(64))
    passages = [e.text for e in read_topic()[0][:64]]
    long = rust_tokenizer(tokenizer_json, 128).encode_batch(passages)
    mean_short = statistics.mean(len(e.ids) for e in short)
    names = list(trunks)
    result: dict[str, Any] = {}
    print("\n| texts | batch | " + " | ".join(f"{n} ms" for n in names) + " | fp32 / int8 |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for label, encodings in (
        (f"real, {mean_short:.0f} tokens on average", short),
        ("news passages, 128 tokens", long),
    ):
        for batch in (1, 16, 32):
            batch_feeds = feeds(spec, [e.ids for e in encodings[:batch]])
            last = [tap_name(spec.num_layers)]
            per_round: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    run = partial(trunks[n].run, batch_feeds, last)
                    per_round[n].append(1000 * median_time(run, repeats))
            row = {f"{n}_ms": summary(v) for n, v in per_round.items()} | {
                f"fp32_over_{n}": summary(
                    [a / b for a, b in zip(per_round["fp32"], v, strict=True)]
                )
                for n, v in per_round.items()
                if n != "fp32"
            }
            result[f"{label}, batch {batch}"] = row | {"ms_per_round": per_round}
            print(
                f"| {label} | {batch} | "
                + " | ".join(f"{row[f'{n}_ms']['median']:.1f}" for n in names)
                + f" | {row[f'fp32_over_{INT8}']['median']:.2f}x |"
            )
    return result


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
    repo: ModelRepository, stored: StoredHead, trunk: TrunkSession, spec: TrunkSpec, alone: int
) -> dict[str, Any]:
    """The head's test metrics with the taps from ``trunk``, on its build-time test split, and
    how far its first ``alone`` examples' probabilities move between alone and batched."""
    split, encoded = test_split(repo, stored)
    head = HeadSession(stored.model_path.read_bytes(), stored.spec.output_name, spec.hidden_size)
    tap = tap_name(stored.spec.branch_layer)
    per_token = stored.spec.kind is Kind.TOKEN_CLASSIFICATION
    logits: list[Any] = []
    for start in range(0, len(encoded.ids), 32):
        rows = encoded.ids[start : start + 32]
        batch = feeds(spec, rows)
        out = head.run(trunk.run(batch, [tap])[tap], batch["attention_mask"])
        for i, row in enumerate(rows):
            logits.append(out[i, : len(row)] if per_token else out[i])
    moved, over, changed = 0.0, 0, 0
    for row, batched in zip(encoded.ids[:alone], logits[:alone], strict=True):
        one = feeds(spec, [row])
        own = head.run(trunk.run(one, [tap])[tap], one["attention_mask"])[0]
        diff = float(np.abs(softmax(own) - softmax(batched)).max())
        moved, over = max(moved, diff), over + (diff > 1e-5)
        changed += int((own.argmax(-1) != batched.argmax(-1)).any())
    metrics = score(stored.spec.kind, logits, split.test, split.labels, encoded.word_tokens)
    return {
        "metrics": metrics,
        "alone_vs_batched": {
            "examples": min(alone, len(logits)),
            "probability_max_abs_diff": moved,
            "examples_over_1e-5": over,
            "examples_with_a_changed_label": changed,
        },
    }


def quality(repo: ModelRepository, trunks: dict[str, TrunkSession], alone: int) -> dict[str, Any]:
    spec = repo.read_trunk_spec()
    names = list(trunks)
    print(
        "\n| task (head) | test examples | metric | build-time (head.json) | "
        + " | ".join(f"{n} trunk" for n in names)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(names))
    result: dict[str, Any] = {}
    for task in HEADLINE:
        stored = repo.read_head(task)
        got = {name: evaluate_head(repo, stored, t, spec, alone) for name, t in trunks.items()}
        recorded = stored.spec.training["test"]
        result[task] = {
            "strategy": stored.spec.training["strategy"],
            "test_examples": stored.spec.training["data"]["test"],
            "build_time_test": recorded,
            "by_trunk": got,
        }
        metrics = ("accuracy", "macro_f1") if task != "ner" else ("entity_f1",)
        for metric in metrics:
            print(
                f"| {task} ({stored.spec.training['strategy']}) | "
                f"{stored.spec.training['data']['test']} | {metric} | {recorded[metric]:.4f} | "
                + " | ".join(f"{got[n]['metrics'][metric]:.4f}" for n in names)
                + " |"
            )
    print("\nalone vs batched (probability moved, examples over 1e-5, changed labels):")
    for task, r in result.items():
        print(task, {n: r["by_trunk"][n]["alone_vs_batched"] for n in names})
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alone", type=int, default=300, help="examples per task sent alone too")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all cores)")
    p.add_argument("--out", type=Path, default=Path("bench/results/int8-trunk.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started, load_start = time.time(), [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.repo, Path(tmp) / "repo")
        repo = ModelRepository(Path(tmp) / "repo")
        if INT8 not in repo.read_trunk_spec().variants:
            quantize_trunk(repo)
        variant = repo.read_trunk_spec().variants[INT8]
        old = Path(tmp) / "model.per-batch.onnx"
        old.write_bytes(per_batch(repo.trunk_model_path.read_bytes()))
        u8s8 = Path(tmp) / "model.u8s8.onnx"
        u8s8.write_bytes(with_int8_weights(repo.trunk_variant_path(INT8).read_bytes()))
        paths = {p: repo.trunk_variant_path(p) for p in ("fp32", INT8)}
        paths |= {U8S8: u8s8, PER_BATCH: old}
        sizes = {p: path.stat().st_size / 2**20 for p, path in paths.items()}
        print(
            f"int8 trunk: {variant.method}; taps vs fp32 on sample texts: max abs diff "
            f"{variant.max_abs_diff:.3g}, min cosine {variant.min_cosine:.4f}; graph MiB "
            f"{sizes}; ORT threads {args.threads or 'all cores'}"
        )
        trunks = {p: TrunkSession(path, Runtime(threads=args.threads)) for p, path in paths.items()}
        result = {
            "machine": machine() | {"load_average_start": load_start},
            "settings": vars(args) | {"repo": str(args.repo), "out": str(args.out)},
            "variant": {
                "method": variant.method,
                "max_abs_diff": variant.max_abs_diff,
                "min_cosine": variant.min_cosine,
            },
            "file_mib": sizes,
            "speed": speed(repo, trunks, args.repeats, args.rounds),
            "quality": quality(repo, trunks, args.alone),
        }
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    write_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
