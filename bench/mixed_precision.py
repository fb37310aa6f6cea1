"""Training time in fp32 and under bfloat16 autocast (``--mixed-precision bf16``), interleaved
over rounds.

Each round trains the same head twice (sentiment top-2 on 8,000 tweets by default), once per
precision, in alternating order; it writes each run's seconds and validation/test score, the
per-round time ratio and the medians to a JSON results file. bf16 pays off only on CPUs that
multiply bfloat16 in hardware (AMX, AVX512-BF16); the results file's machine says which CPU ran.

    python -m bench.mixed_precision --rounds 2 --out bench/results/mixed-precision.json
"""

from __future__ import annotations

from bench.training_ab import compare, parser
from multitask_serve.training.recipe import native_bf16


def main() -> None:
    p = parser(__doc__, "bench/results/mixed-precision.json")
    p.set_defaults(max_eval=None)
    args = p.parse_args()
    print(f"native bf16 units: {native_bf16()}")
    compare(args, {"bf16": {"mixed_precision": "bf16"}, "fp32": {"mixed_precision": "none"}})


if __name__ == "__main__":
    main()
