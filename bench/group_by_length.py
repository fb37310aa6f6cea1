"""Training time with and without length-grouped batches, interleaved over rounds.

Each round trains the same head twice (sentiment top-2 on 8,000 tweets by default), once with
batches of similar lengths and once with random batches, in alternating order; it writes each
run's seconds and test score, the per-round time ratio and the medians to a JSON results file.

    python -m bench.group_by_length --rounds 2 --out bench/results/group-by-length.json
"""

from __future__ import annotations

from bench.training_ab import compare, parser


def main() -> None:
    args = parser(__doc__, "bench/results/group-by-length.json").parse_args()
    compare(args, {"grouped": {"group_by_length": True}, "random": {"group_by_length": False}})


if __name__ == "__main__":
    main()
