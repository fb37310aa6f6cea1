"""Trunk and head specs: the frozen dataclasses behind trunk.json and head.json.

Both files carry a ``schema_version`` so that later formats can be read by shims instead of guesses.
Parsing is strict: an unknown schema version, a missing field or a wrong type is a ``SpecError``
with a message that names the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

SCHEMA_VERSION = 1
TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# Graph signature every head obeys.
HEAD_HIDDEN_INPUT = "hidden"
HEAD_MASK_INPUT = "attention_mask"


def tap_name(layer: int) -> str:
    """Name of the trunk output holding the hidden state after ``layer`` (0 = embeddings)."""
    return f"tap_{layer}"


class SpecError(ValueError):
    """A trunk.json or head.json that does not follow the schema."""


class Kind(StrEnum):
    EMBEDDING = "embedding"
    ZERO_SHOT = "zero-shot"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"


@dataclass(frozen=True)
class KindTraits:
    """What every layer needs to know about one kind of head: the one place it is written."""

    # The head graph's output.
    output: str
    # Whether head.json must list labels (else it must list none).
    labelled: bool
    # Whether the graph answers per token (batch, seq, width) rather than per text (batch, width).
    per_token: bool
    # Where the output width comes from: the trunk's hidden size or the number of labels.
    width: Literal["hidden", "labels"]
    # The form of its results: vectors, label scores, or entity spans. How raw outputs become
    # results, compare and are reported (service/outputs.py) and how each wire format lays them out
    # (the Open Inference Protocol's tensors: service/oip.py) are keyed by it.
    decode: Literal["vector", "classes", "spans"]
    # Trained in PyTorch and traced (the module is its own parity reference); else the graph is
    # built from the trunk alone and checked against a reference module (export/heads.py).
    trained: bool


KINDS: Mapping[Kind, KindTraits] = MappingProxyType(
    {
        Kind.EMBEDDING: KindTraits(
            output="embedding",
            labelled=False,
            per_token=False,
            width="hidden",
            decode="vector",
            trained=False,
        ),
        Kind.ZERO_SHOT: KindTraits(
            output="logits",
            labelled=True,
            per_token=False,
            width="labels",
            decode="classes",
            trained=False,
        ),
        Kind.SEQUENCE_CLASSIFICATION: KindTraits(
            output="logits",
            labelled=True,
            per_token=False,
            width="labels",
            decode="classes",
            trained=True,
        ),
        Kind.TOKEN_CLASSIFICATION: KindTraits(
            output="logits",
            labelled=True,
            per_token=True,
            width="labels",
            decode="spans",
            trained=True,
        ),
    }
)


def validate_task_name(task: str) -> str:
    if not TASK_NAME_RE.fullmatch(task):
        raise SpecError(
            f"invalid task name {task!r}: use 1-64 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return task


def _get(data: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise SpecError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise SpecError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _check_schema(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SpecError(
            f"{where}: unsupported schema_version {version!r} (this build reads {SCHEMA_VERSION})"
        )
    return data


# The precision of the graph heads were trained against; every other precision is a variant.
REFERENCE_PRECISION = "fp32"
# What the name of every int8 method (trunk.json's ``variants.<name>.method``, head.json's
# ``training.quantization.method``) says once its integer products cannot saturate on any CPU
# (export/per_row.py). A graph whose method lacks it ran ONNX Runtime's u8 x s8 kernel, whose
# answers are wrong on x86 without VNNI; the service warns when it loads one.
EXACT_INTEGER_PRODUCTS = "exact u8 x u8 products on every CPU"
PRECISION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class TrunkVariant:
    """Another graph of the same trunk (e.g. int8 quantized) that may be served in its place.

    Heads keep binding to the reference (fp32) fingerprint: a variant computes the same function
    approximately, so it is recorded beside the trunk with its own hash and how far its taps
    moved, rather than becoming a new trunk that would orphan every head.
    """

    file: str
    # trunk_fingerprint() of this graph's bytes and the trunk's tokenizer.
    fingerprint: str
    method: str
    # Measured against the reference graph on sample texts when the variant was made.
    max_abs_diff: float = 0.0
    min_cosine: float = 1.0
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TrunkVariant:
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a JSON object")
        file = _get(data, "file", str, where)
        if "/" in file or "\\" in file or file.startswith("."):
            raise SpecError(f"{where}: field 'file' must be a plain file name, got {file!r}")
        return cls(
            file=file,
            fingerprint=_get(data, "fingerprint", str, where),
            method=_get(data, "method", str, where),
            max_abs_diff=float(data.get("max_abs_diff", 0.0)),
            min_cosine=float(data.get("min_cosine", 1.0)),
            versions=dict(data.get("versions", {})),
        )


@dataclass(frozen=True)
class TrunkSpec:
    """What trunk.json records about the shared frozen encoder graph.

    ``fingerprint`` identifies the reference graph (model.onnx), the one heads are trained and
    validated against. ``variants`` maps a precision name (e.g. "int8") to another graph of the
    same trunk that a deployment may serve instead; it never changes what heads bind to.
    """

    base_model: str
    num_layers: int
    hidden_size: int
    max_length: int
    input_names: tuple[str, ...]
    fingerprint: str
    parity_max_abs_diff: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    variants: dict[str, TrunkVariant] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def precisions(self) -> tuple[str, ...]:
        return (REFERENCE_PRECISION, *sorted(self.variants))

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(tap_name(i) for i in range(self.num_layers + 1))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> TrunkSpec:
        where = "trunk.json"
        try:
            data = _check_schema(json.loads(text), where)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{where}: not valid JSON ({exc})") from exc
        return cls(
            base_model=_get(data, "base_model", str, where),
            num_layers=_get(data, "num_layers", int, where),
            hidden_size=_get(data, "hidden_size", int, where),
            max_length=_get(data, "max_length", int, where),
            input_names=tuple(_get(data, "input_names", list, where)),
            fingerprint=_get(data, "fingerprint", str, where),
            parity_max_abs_diff=float(data.get("parity_max_abs_diff", 0.0)),
            versions=dict(data.get("versions", {})),
            variants=_variants(data.get("variants", {}), where),
        )


def _variants(data: Any, where: str) -> dict[str, TrunkVariant]:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: field 'variants' must be an object")
    variants = {}
    for name, value in data.items():
        if not PRECISION_RE.match(name) or name == REFERENCE_PRECISION:
            raise SpecError(f"{where}: invalid variant name {name!r}")
        variants[name] = TrunkVariant.from_dict(value, f"{where} variant {name!r}")
    return variants


@dataclass(frozen=True)
class HeadSpec:
    """What head.json records about one task's graph."""

    task: str
    kind: Kind
    branch_layer: int
    hidden_size: int
    trunk_fingerprint: str
    labels: tuple[str, ...] = ()
    pooling: str = "mean"
    # Largest difference of the graph's output from its reference on the sample taps: the PyTorch
    # module for a reference-precision head, the fp32 graph it was made from for a variant.
    parity_max_abs_diff: float = 0.0
    # Free-form provenance: strategy, data, seed, config, validation metrics (and, for a variant,
    # how it was made from the fp32 graph: training["quantization"]).
    training: dict[str, Any] = field(default_factory=dict)
    # The numeric precision of the head's own weights ("fp32", or "int8" for a quantized copy).
    # Inputs and outputs are float32 whatever it is, so the service serves every precision alike.
    precision: str = REFERENCE_PRECISION
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        validate_task_name(self.task)
        if not PRECISION_RE.match(self.precision):
            raise SpecError(f"head.json: invalid precision {self.precision!r}")
        if not self.traits.labelled and self.labels:
            raise SpecError(f"head.json: an {self.kind} head has no labels")
        if self.traits.labelled and not self.labels:
            raise SpecError(f"head.json: a {self.kind} head needs labels")
        if len(set(self.labels)) != len(self.labels):
            raise SpecError("head.json: labels must be unique")
        if self.pooling not in ("mean", "cls", "none"):
            raise SpecError(f"head.json: unknown pooling {self.pooling!r}")

    @property
    def traits(self) -> KindTraits:
        return KINDS[self.kind]

    @property
    def output_name(self) -> str:
        return self.traits.output

    @property
    def output_width(self) -> int:
        return self.hidden_size if self.traits.width == "hidden" else len(self.labels)

    def output_shape(self, batch: int, seq: int) -> tuple[int, ...]:
        """The shape of the head graph's output on ``batch`` texts padded to ``seq`` tokens."""
        if self.traits.per_token:
            return (batch, seq, self.output_width)
        return (batch, self.output_width)

    def to_json(self) -> str:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["labels"] = list(self.labels)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> HeadSpec:
        where = "head.json"
        try:
            data = _check_schema(json.loads(text), where)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"{where}: not valid JSON ({exc})") from exc
        kind_name = _get(data, "kind", str, where)
        try:
            kind = Kind(kind_name)
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise SpecError(f"{where}: unknown kind {kind_name!r} (known: {known})") from None
        labels = _get(data, "labels", list, where) if "labels" in data else []
        if not all(isinstance(label, str) for label in labels):
            raise SpecError(f"{where}: labels must be strings")
        training = data.get("training", {})
        if not isinstance(training, dict):
            raise SpecError(f"{where}: field 'training' must be an object")
        return cls(
            task=_get(data, "task", str, where),
            kind=kind,
            branch_layer=_get(data, "branch_layer", int, where),
            hidden_size=_get(data, "hidden_size", int, where),
            trunk_fingerprint=_get(data, "trunk_fingerprint", str, where),
            labels=tuple(labels),
            pooling=data.get("pooling", "mean"),
            parity_max_abs_diff=float(data.get("parity_max_abs_diff", 0.0)),
            training=training,
            precision=_get(data, "precision", str, where)
            if "precision" in data
            else REFERENCE_PRECISION,
        )


def trunk_fingerprint(model: bytes, tokenizer: bytes) -> str:
    """sha256 over the trunk graph's bytes and then the tokenizer file's bytes."""
    digest = hashlib.sha256()
    digest.update(model)
    digest.update(tokenizer)
    return digest.hexdigest()
