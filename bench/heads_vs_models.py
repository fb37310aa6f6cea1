"""One trunk + N heads versus N separate full models, and the marginal cost of each added head.

Comparisons 3 and 4 of the benchmark plan, in one process, side by side, ONNX Runtime on CPU:
- three separate full ONNX models (encoder + classifier each, what a user would deploy per task)
  against one trunk run plus three head-only heads, on the same batch;
- trunk + n heads for n = 1..16, for head-only, top-1 and top-2 heads: the added time per head
  as a share of the trunk's.
Weights are random (speed does not depend on them); shapes are all-MiniLM-L6-v2's.

    .venv/bin/python -m bench.heads_vs_models [--batch 16] [--repeats 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import onnxruntime as ort
import torch
from torch import nn

from multitask_serve.export.encoder import load_encoder
from multitask_serve.export.heads import HeadExporter
from multitask_serve.export.modules import Head, Trunk, top_layers
from multitask_serve.export.onnx_export import OPSET, ExportDecl, export
from multitask_serve.export.samples import SAMPLE_TEXTS, encode, tokenizer_from_json
from multitask_serve.export.trunk import export_trunk
from multitask_serve.modelrepo.types import Kind


class FullModel(nn.Module):
    """Encoder and classifier in one graph: a per-task model, no sharing."""

    def __init__(self, trunk: Trunk, head: Head) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, input_ids, attention_mask, token_type_ids):
        taps = self.trunk(input_ids, attention_mask, token_type_ids)
        return self.head(taps[-1], attention_mask)


SPIN = True


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    if not SPIN:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--no-spin",
        action="store_true",
        help="ORT worker threads sleep between runs instead of spinning",
    )
    args = p.parse_args()
    global SPIN
    SPIN = not args.no_spin
    logging.basicConfig(level=logging.WARNING)

    encoder = load_encoder()
    trunk_spec, trunk_model = export_trunk(encoder)
    exporter = HeadExporter(encoder, trunk_spec)
    tokenizer = tokenizer_from_json(encoder.tokenizer_json, trunk_spec.max_length)
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(args.batch)]
    feeds = {k: v.numpy() for k, v in encode(tokenizer, texts, True).items()}
    trunk = session(trunk_model, args.threads)

    def make_head(k: int, seed: int) -> tuple[bytes, int]:
        torch.manual_seed(seed)
        head = Head(Kind.SEQUENCE_CLASSIFICATION, encoder.hidden_size, 3, top_layers(encoder, k))
        spec, model = exporter.classification(f"h{seed}", head, ("a", "b", "c"))
        return model, spec.branch_layer

    # Comparison 3: three full models vs one trunk + three head-only heads.
    heads = [make_head(0, s) for s in range(3)]
    head_sessions = [(session(m, args.threads), b) for m, b in heads]
    full_sessions = []
    for s in range(3):
        torch.manual_seed(s)
        head = Head(Kind.SEQUENCE_CLASSIFICATION, encoder.hidden_size, 3)
        full = FullModel(Trunk(encoder), head).eval()
        names = ("input_ids", "attention_mask", "token_type_ids")
        axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
        sample = {n: torch.from_numpy(feeds[n]) for n in names}
        decl = ExportDecl(f"full {s}", names, ("logits",), axes, 1e-4, OPSET)
        full_sessions.append(session(export(full, sample, decl).model, args.threads))

    def shared() -> None:
        taps = trunk.run(None, feeds)
        for s, branch in head_sessions:
            s.run(None, {"hidden": taps[branch], "attention_mask": feeds["attention_mask"]})

    def separate() -> None:
        for s in full_sessions:
            s.run(None, feeds)

    rounds = [
        (median_time(separate, args.repeats), median_time(shared, args.repeats)) for _ in range(3)
    ]
    sep, sha = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
    print(
        f"batch {args.batch} x {feeds['input_ids'].shape[1]} tokens, ORT threads "
        f"{args.threads or 'default'}"
    )
    print("\n| setup (3 tasks, same batch) | ms per batch | texts/s | ratio |")
    print("|---|---|---|---|")
    print(f"| 3 separate full models | {1000 * sep:.1f} | {args.batch / sep:.0f} | 1.00x |")
    print(
        f"| 1 trunk + 3 head-only heads | {1000 * sha:.1f} | {args.batch / sha:.0f} | "
        f"{sep / sha:.2f}x |"
    )

    # Comparison 4: marginal cost per added head.
    trunk_time = median_time(lambda: trunk.run(None, feeds), args.repeats)
    print(f"\ntrunk alone: {1000 * trunk_time:.1f} ms per batch")
    print("\n| head kind | heads | ms per batch (trunk + heads) | added per head, % of trunk |")
    print("|---|---|---|---|")
    taps = trunk.run(None, feeds)
    for k, label in ((0, "head-only"), (1, "top-1"), (2, "top-2")):
        pool = [
            (session(m, args.threads), b) for m, b in (make_head(k, 100 + i) for i in range(16))
        ]
        for n in (1, 2, 4, 8, 16):

            def run_heads(n: int = n, pool: list = pool) -> None:
                for s, branch in pool[:n]:
                    s.run(None, {"hidden": taps[branch], "attention_mask": feeds["attention_mask"]})

            heads_time = median_time(run_heads, args.repeats)
            print(
                f"| {label} | {n} | {1000 * (trunk_time + heads_time):.1f} | "
                f"{100 * heads_time / n / trunk_time:.2f}% |"
            )


if __name__ == "__main__":
    main()
