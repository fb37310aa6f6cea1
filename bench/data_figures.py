"""The data figures docs/training.md quotes: what padding a training batch computes, and how many
test tweets had a near-duplicate in train before near-duplicates shared a split.

Padding: each task's training split as the report trains it (``DEFAULT_TASKS``: sentiment 8,000
tweets at 48 tokens, topic at 96, NER at 48), tokenized as training tokenizes it, cut into batches
of 32 the way training orders them (``TapSource``: random, or length-grouped) over several
shuffles; a batch computes its longest text's length for every text, so the ratio is computed
tokens over the tokens the texts hold.
Near-duplicates: the sentiment data split with seed 0 under the earlier key (case and spaces
only) and under today's (``normalise_text``), counting test tweets whose today's key a train tweet
shares. Tokenizing and splitting only: no training, a few seconds.

    python -m bench.data_figures --out bench/results/data-figures.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, cast

import torch

from multitask_serve.export.encoder import load_encoder
from multitask_serve.training import data
from multitask_serve.training.features import Encoded, TapSource, rust_tokenizer
from multitask_serve.training.loop import encode_split
from multitask_serve.training.report import DEFAULT_TASKS
from support.machine import machine

BATCH = 32


def padding_ratio(encoded: Encoded, group_by_length: bool, seed: int) -> float:
    """Tokens the batches compute (each padded to its longest text) over the tokens they hold."""
    # No cache (limit 0) and no trunk call: only the training order of batches is used.
    source = TapSource(
        trunk=cast(Any, None),
        branch=0,
        encoded=encoded,
        hidden_size=1,
        batch_size=BATCH,
        uses_token_types=False,
        cache_limit_bytes=0,
        group_by_length=group_by_length,
    )
    generator = torch.Generator().manual_seed(seed)
    batches = source._order(shuffle=True, generator=generator)
    lengths = [[len(encoded.ids[i]) for i in batch] for batch in batches]
    return sum(max(b) * len(b) for b in lengths) / sum(sum(b) for b in lengths)


def padding(tokenizer_json: bytes, shuffles: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task, config in DEFAULT_TASKS.items():
        split = data.load_dataset(task, seed=0, max_train=config.max_train)
        train, _, _ = encode_split(split, rust_tokenizer(tokenizer_json, config.max_length))
        sides: dict[str, Any] = {"max_train": config.max_train, "max_length": config.max_length}
        sides["examples"] = len(train.ids)
        for side, grouped in (("random", False), ("grouped", True)):
            ratios = [padding_ratio(train, grouped, seed) for seed in range(shuffles)]
            sides[side] = {
                "median": round(statistics.median(ratios), 4),
                "min": round(min(ratios), 4),
                "max": round(max(ratios), 4),
            }
        out[task] = sides
    return out


def old_key(text: str) -> str:
    """The near-duplicate key before links, mentions, retweets and punctuation were ignored."""
    return " ".join(text.lower().split())


def near_duplicates() -> dict[str, Any]:
    """Sentiment test tweets (seed 0) with a train tweet of the same ``normalise_text`` key,
    with the split made under the earlier key and under today's."""
    texts, _ = data.read_sentiment()
    today = data.normalise_text
    counts = {}
    for name, key in (("earlier_key", old_key), ("today_key", today)):
        data.normalise_text = key  # the split's grouping key; restored below
        try:
            split = data.split_texts(texts, 0, name="sentiment", source="")
        finally:
            data.normalise_text = today
        in_train = {today(e.text) for e in split.train}
        counts[name] = {
            "train": len(split.train),
            "test": len(split.test),
            "with_a_variant_in_train": sum(today(e.text) in in_train for e in split.test),
        }
    return counts


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shuffles", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/data-figures.json"))
    args = p.parse_args()
    results = {
        "command": f"python -m bench.data_figures --shuffles {args.shuffles}",
        "batch_size": BATCH,
        "padding": padding(load_encoder().tokenizer_json, args.shuffles),
        "near_duplicates": near_duplicates(),
        "machine": machine(),
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("padding", "near_duplicates")}, indent=1))


if __name__ == "__main__":
    main()
