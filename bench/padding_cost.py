"""What padding costs the trunk on real, mixed-length texts: one padded batch vs length groups.

The service pads every text of a micro-batch to the batch's longest text. On the texts of
bench/pipelines_vs_ours.py (tweets and news sentences, a long tail of long ones), this compares,
for consecutive groups of ``--batch`` texts: the trunk on the padded batch as the service runs it;
the same texts sorted by length and run as ``--groups`` smaller padded batches; and each text
alone (no padding). Same session options as serving; the runs alternate.

    .venv/bin/python -m bench.padding_cost [--repo model-repo] [--batch 16] [--groups 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.int8_trunk import feeds
from bench.pipelines_vs_ours import real_texts
from multitask_serve.modelrepo.repository import ModelRepository
from multitask_serve.modelrepo.types import tap_name
from multitask_serve.service.trunk import TrunkSession
from multitask_serve.training.features import rust_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("model-repo"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--batches", type=int, default=12)
    args = p.parse_args()
    repo = ModelRepository(args.repo)
    spec = repo.read_trunk_spec()
    tokenizer = rust_tokenizer(repo.tokenizer_path.read_bytes(), spec.max_length)
    rows = [e.ids for e in tokenizer.encode_batch(real_texts(600))]
    lengths = np.array([len(r) for r in rows])
    print(
        f"{len(rows)} texts: tokens mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()} (max_length {spec.max_length})"
    )
    trunk = TrunkSession(repo.trunk_model_path)
    last = [tap_name(spec.num_layers)]
    size = args.batch // args.groups

    def padded(batch: list[list[int]]) -> None:
        trunk.run(feeds(spec, batch), last)

    def grouped(batch: list[list[int]]) -> None:
        ordered = sorted(batch, key=len)
        for i in range(0, len(ordered), size):
            trunk.run(feeds(spec, ordered[i : i + size]), last)

    def alone(batch: list[list[int]]) -> None:
        for row in batch:
            trunk.run(feeds(spec, [row]), last)

    ways = {
        "one padded batch": padded,
        f"{args.groups} length groups": grouped,
        "one by one": alone,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    padded_tokens = real_tokens = 0
    for b in range(args.batches):
        batch = rows[b * args.batch : (b + 1) * args.batch]
        padded_tokens += len(batch) * max(len(r) for r in batch)
        real_tokens += sum(len(r) for r in batch)
        padded(batch)  # warm this shape
        for name, way in ways.items():
            started = time.perf_counter()
            way(batch)
            times[name].append(time.perf_counter() - started)
    print(
        f"padded batches of {args.batch}: {100 * (1 - real_tokens / padded_tokens):.0f}% of the "
        "trunk's tokens are padding\n"
    )
    print("| how the trunk runs a batch | ms per batch (median) | texts/s | vs one padded batch |")
    print("|---|---|---|---|")
    base = statistics.median(times["one padded batch"])
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"| {name} | {1000 * ms:.1f} | {args.batch / ms:.0f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
