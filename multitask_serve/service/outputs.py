"""What each form of head output is, in one table: how a head's raw output becomes one result per
text, how a candidate's results compare with the served head's (shadows, service/shadow.py), and
what a shadow's report says of that comparison.

A kind's ``decode`` trait (modelrepo/types.py ``KINDS``) names its form: ``vector`` (embeddings),
``classes`` (label scores) or ``spans`` (entities). ``FORMS`` maps each to its ``OutputForm``,
whose three methods sit side by side; nothing else switches on the name. The arithmetic of
decoding (softmax, BIO tags to character spans) is service/postprocess.py's.

Agreement per text: the same label (classes), the same set of entity spans (spans), cosine >=
``COSINE_AGREES`` (vectors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import numpy as np

from multitask_serve.modelrepo.types import HeadSpec
from multitask_serve.service.postprocess import (
    classifications,
    entities,
    entity_rows,
    pool_probabilities,
    pool_vectors,
    softmax,
)
from multitask_serve.service.types import Output, TokenizedBatch
from multitask_serve.service.windows import Window, owners

# Two embeddings of one text "agree" at this cosine or above.
COSINE_AGREES = 0.99

# One text's result in a form: a vector, a classification, or a list of entity spans.
R = TypeVar("R")


@dataclass(frozen=True)
class WindowedText:
    """A text read in several windows, and what a head answered on each window's row."""

    text: str
    raws: list[np.ndarray]  # per window: the head's output on its row (per token: its tokens)
    encodings: list[Any]  # per window: its ``tokenizers.Encoding`` (offsets into ``text``)
    layout: list[Window]  # per window: the text's tokens it holds (special tokens aside)

    @property
    def weights(self) -> np.ndarray:
        """Per window, its tokens of text."""
        return np.array([len(w) for w in self.layout], dtype=np.float64)


@dataclass
class Comparison:
    """What a candidate's results showed against the served ones, summed over texts."""

    texts: int = 0
    agreed: int = 0
    score_diff_sum: float = 0.0
    score_diff_count: int = 0
    cosine_sum: float = 0.0
    cosine_min: float | None = None
    spans_matched: int = 0
    spans_served: int = 0
    spans_candidate: int = 0

    def score_diffs(self, diffs: list[float]) -> None:
        self.score_diff_sum += sum(diffs)
        self.score_diff_count += len(diffs)

    def add(self, other: Comparison) -> None:
        """Fold another comparison's totals into these."""
        for name in (f.name for f in fields(self) if f.name != "cosine_min"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.cosine_min is not None:
            low = other.cosine_min
            self.cosine_min = low if self.cosine_min is None else min(self.cosine_min, low)

    @property
    def mean_abs_score_diff(self) -> float | None:
        return self.score_diff_sum / self.score_diff_count if self.score_diff_count else None


@dataclass(frozen=True)
class OutputForm(Generic[R]):
    """One form of output: decode, compare and report, for results of type ``R``."""

    def decode(
        self, spec: HeadSpec, raw: np.ndarray, batch: TokenizedBatch, texts: list[str]
    ) -> list[R]:
        """One result per text from a head's raw output for the whole batch."""
        raise NotImplementedError

    def pool(self, spec: HeadSpec, windowed: WindowedText) -> R:
        """One result for a text read in several windows, from each window's raw output."""
        raise NotImplementedError

    def compare_one(self, served: R, candidate: R, out: Comparison) -> None:
        """Add one text's served and candidate results to ``out``."""
        raise NotImplementedError

    def report(self, totals: Comparison) -> dict[str, Any]:
        """The fields of a shadow's report this form adds to the ones every form has."""
        raise NotImplementedError

    def compare(self, served: list[R], candidate: list[R]) -> Comparison:
        out = Comparison(texts=len(served))
        for s, c in zip(served, candidate, strict=True):
            self.compare_one(s, c, out)
        return out


@dataclass(frozen=True)
class Vectors(OutputForm[list[float]]):
    def decode(
        self, spec: HeadSpec, raw: np.ndarray, batch: TokenizedBatch, texts: list[str]
    ) -> list[list[float]]:
        rows: list[list[float]] = raw.tolist()
        return rows

    def pool(self, spec: HeadSpec, windowed: WindowedText) -> list[float]:
        pooled: list[float] = pool_vectors(np.stack(windowed.raws), windowed.weights).tolist()
        return pooled

    def compare_one(self, served: list[float], candidate: list[float], out: Comparison) -> None:
        dot = sum(a * b for a, b in zip(served, candidate, strict=True))
        norms = math.sqrt(sum(a * a for a in served)) * math.sqrt(sum(b * b for b in candidate))
        cosine = dot / norms if norms > 0 else 0.0
        out.cosine_sum += cosine
        out.cosine_min = cosine if out.cosine_min is None else min(out.cosine_min, cosine)
        out.agreed += cosine >= COSINE_AGREES
        diffs = [abs(a - b) for a, b in zip(served, candidate, strict=True)]
        out.score_diffs([sum(diffs) / len(diffs)])

    def report(self, totals: Comparison) -> dict[str, Any]:
        seen = totals.texts
        return {
            "cosine_mean": totals.cosine_sum / seen if seen else None,
            "cosine_min": totals.cosine_min,
        }


Classification = dict[str, Any]


@dataclass(frozen=True)
class Classes(OutputForm[Classification]):
    def decode(
        self, spec: HeadSpec, raw: np.ndarray, batch: TokenizedBatch, texts: list[str]
    ) -> list[Classification]:
        return classifications(softmax(raw), spec.labels)

    def pool(self, spec: HeadSpec, windowed: WindowedText) -> Classification:
        probs = pool_probabilities(np.stack(windowed.raws), windowed.weights)
        return classifications(probs[None], spec.labels)[0]

    def compare_one(
        self, served: Classification, candidate: Classification, out: Comparison
    ) -> None:
        out.agreed += served["label"] == candidate["label"]
        common = served["scores"].keys() & candidate["scores"].keys()
        if common:
            diffs = [abs(served["scores"][k] - candidate["scores"][k]) for k in common]
            out.score_diffs([sum(diffs) / len(diffs)])

    def report(self, totals: Comparison) -> dict[str, Any]:
        seen = totals.texts
        return {"label_agreement": totals.agreed / seen if seen else None}


Spans = list[dict[str, Any]]


@dataclass(frozen=True)
class EntitySpans(OutputForm[Spans]):
    def decode(
        self, spec: HeadSpec, raw: np.ndarray, batch: TokenizedBatch, texts: list[str]
    ) -> list[Spans]:
        probs = softmax(raw)
        return [
            entities(texts[i], probs[i], batch.offsets[i], batch.word_ids[i], spec.labels)
            if tagged
            else []
            for i, tagged in enumerate(entity_rows(probs, batch.attention_mask, spec.labels))
        ]

    def pool(self, spec: HeadSpec, windowed: WindowedText) -> Spans:
        """Each token's scores from the window where it has the most context on both sides
        (``windows.owners``), then entities decoded once over the whole text."""
        content = [
            [i for i, special in enumerate(e.special_tokens_mask) if not special]
            for e in windowed.encodings
        ]
        for held, span in zip(content, windowed.layout, strict=True):
            if len(held) != len(span):
                raise AssertionError(f"a window holds {len(held)} tokens, its layout {len(span)}")
        probs = [softmax(raw) for raw in windowed.raws]
        picks = [(w, content[w][at]) for w, at in owners(windowed.layout)]
        # An Encoding makes a new list at each read of offsets or word_ids: read each once.
        offsets = [e.offsets for e in windowed.encodings]
        word_ids = [e.word_ids for e in windowed.encodings]
        return entities(
            windowed.text,
            np.stack([probs[w][i] for w, i in picks]),
            [offsets[w][i] for w, i in picks],
            [word_ids[w][i] for w, i in picks],
            spec.labels,
        )

    def compare_one(self, served: Spans, candidate: Spans, out: Comparison) -> None:
        def key(span: dict[str, Any]) -> tuple[str, int, int]:
            return span["entity"], span["start"], span["end"]

        s = {key(span): span["score"] for span in served}
        c = {key(span): span["score"] for span in candidate}
        matched = s.keys() & c.keys()
        out.agreed += s.keys() == c.keys()
        out.spans_matched += len(matched)
        out.spans_served += len(s)
        out.spans_candidate += len(c)
        out.score_diffs([abs(s[k] - c[k]) for k in matched])

    def report(self, totals: Comparison) -> dict[str, Any]:
        predicted = totals.spans_served + totals.spans_candidate
        return {
            "entity_span_f1": 2 * totals.spans_matched / predicted if predicted else None,
            "entity_spans": {
                "served": totals.spans_served,
                "candidate": totals.spans_candidate,
                "matched": totals.spans_matched,
            },
        }


# KindTraits.decode -> its form.
FORMS: Mapping[str, OutputForm[Any]] = MappingProxyType(
    {"vector": Vectors(), "classes": Classes(), "spans": EntitySpans()}
)


def form_of(spec: HeadSpec) -> OutputForm[Any]:
    return FORMS[spec.traits.decode]


def decode(
    spec: HeadSpec, raw: np.ndarray, batch: TokenizedBatch, texts: list[str]
) -> list[Output]:
    """One result per text from a head's raw output for the whole batch."""
    return form_of(spec).decode(spec, raw, batch, texts)


def pool(spec: HeadSpec, windowed: WindowedText) -> Output:
    """One result for a text read in several windows."""
    result: Output = form_of(spec).pool(spec, windowed)
    return result
