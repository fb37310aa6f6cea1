"""``TrainConfig``: everything one training run is made of; head.json stores it whole.

Every field is also an ``mts train`` flag (multitask_serve/cli/train.py). The defaults are the
recipe the default build was tuned with (docs/training.md says how they were chosen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads this module's defaults without torch installed
    from multitask_serve.training.strategies import Strategy


@dataclass
class TrainConfig:
    task: str
    data: str  # "sentiment", "topic", "ner", or a CSV/JSONL/CoNLL path
    strategy: str = "top-2"
    seed: int = 0
    # The data split is fixed by its own seed, so runs with different training seeds compare
    # on the same test set.
    split_seed: int = 0
    # Most epochs (per depth for progressive). None: 10 for head-only (cheap), 4 otherwise.
    epochs: int | None = None
    batch_size: int = 32
    # Batch examples of similar length together (each 50 batches' worth of shuffled examples is
    # sorted by length; the batches' order stays random): less padding to compute.
    group_by_length: bool = True
    # The top owned layer's peak rate; each layer below it gets lr_decay times the one above
    # (ULMFiT's discriminative rates; 1.0 = one rate for all layers).
    layer_lr: float = 1e-4
    lr_decay: float = 0.9
    head_lr: float = 2e-3
    # Fraction of the optimizer steps spent warming up linearly from zero; then "linear" decays
    # to zero at the last planned step, "constant" keeps the peak rate.
    warmup: float = 0.1
    schedule: str = "linear"
    # "bf16": the trained layers' forward pass under bfloat16 autocast, weights and optimizer
    # state in fp32; epochs about 1.5x faster on CPUs with native bf16 matrix units (AMX,
    # AVX512-BF16), slower on others. "auto": bf16 where the CPU has them, else "none" (a run
    # records which). Validation, test and the exported head stay fp32.
    mixed_precision: str = "none"
    # Gradient norm clipping (None: no clipping).
    grad_clip: float | None = 1.0
    # Weight the loss by inverse class frequency (per token for tagging): helps rare classes'
    # recall at some cost in precision.
    class_weights: bool = False
    weight_decay: float = 0.01
    # Early stopping: epochs without a validation gain before training stops (None: never);
    # progressive: before the next layer unfreezes.
    patience: int | None = 2
    # Progressive: serve the shallowest depth whose validation score is within this much of the
    # best depth's (0.01 = one point of macro-F1 / entity F1).
    tolerance: float = 0.01
    # Progressive: the deepest it may go (None: every layer), and how many deeper depths in a row
    # may fail to beat the best before it stops (None: go on to max_depth).
    max_depth: int | None = None
    depth_patience: int | None = None
    max_length: int = 128
    max_train: int | None = None
    # Validation and test examples used (None: all). Smaller is faster and noisier.
    max_eval: int | None = None
    cache_limit_mb: int = 4096
    pooling: str = "mean"
    # Column (CSV) or key (JSON lines) names in a user's text-classification file.
    text_column: str = "text"
    label_column: str = "label"

    def resolved_epochs(self, strat: Strategy) -> int:
        if self.epochs is not None:
            return self.epochs
        return 10 if strat.owned(12) == 0 else 4
