"""Raw text -> triples: the candidate pairs of each sentence as Instances, and the decision
that turns each pair's prediction into a triple or nothing.

A sentence is tokenised the way every text is (`tkre.data.text.tokenize_with_offsets`); a
mention becomes the tokens it touches, so the offsets a triple reports are those of the tokens
the model saw (the same as spaCy's, unless a spaCy token cuts one of ours, e.g. "U.S." and
"U.S" + "."). A pair is scored once per type variant (`TypeFilter.variants`) and yields at most
one triple: its best variant that passes the decision.

The decision (`Decision.triple`): the pair's best relation (trained and run-time ones ranked
together, as for items) must not be the no-relation label, its schema must take the variant's
types, and its score must reach the relation's threshold: the caller's `thresholds[relation]`,
else the caller's `thresholds["*"]`, else the threshold fitted on the dev set
(`tkre.extract.thresholds`), else 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tkre.data.text import tokenize_with_offsets
from tkre.extract.candidates import Mention, Sentence, TypeFilter, mention_pairs
from tkre.extract.wire import Prediction, field_error
from tkre.schema import Instance, Span

ANY_RELATION = "*"  # the thresholds key for every relation not named


@dataclass(frozen=True)
class Argument:
    """One side of a candidate pair: characters [start, end) of the document, its text, the
    type reported (the schema's type, else the NER label) and its token span in the sentence."""

    start: int
    end: int
    text: str
    type: str | None
    first: int
    stop: int

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "type": self.type}


@dataclass(frozen=True)
class Candidate:
    """One scored Instance: document, sentence, the pair (its index in the plan) and the
    variant's types."""

    document: int
    sentence: int
    pair: int
    head: Argument
    tail: Argument


@dataclass
class TextPlan:
    """What a batch of texts asks the model: one Candidate per scored Instance, in order."""

    documents: int
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # per document: pairs too long to encode

    @property
    def pairs(self) -> int:
        return len({(c.document, c.pair) for c in self.candidates})


def _arguments(text: str, sentence: Sentence, offsets: list[tuple[int, int]]
               ) -> list[tuple[Mention, int, int]]:
    """Each mention with the sentence tokens [first, stop) it touches; mentions that touch no
    token, or the same tokens as an earlier one, are dropped."""
    starts = [s for s, _ in offsets]
    ends = [e for _, e in offsets]
    out, seen = [], set()
    for m in sentence.mentions:
        first = bisect.bisect_right(ends, m.start - sentence.start)
        stop = bisect.bisect_left(starts, m.end - sentence.start)
        if first >= stop or (first, stop) in seen:
            continue
        seen.add((first, stop))
        out.append((m, first, stop))
    return out


def plan_texts(texts: Sequence[str], sentences: Sequence[Sequence[Sentence]],
               types: TypeFilter, window: int = 0,
               exclude: Mapping[int, Sequence[tuple[int, int, int, int]]] | None = None
               ) -> tuple[TextPlan, list[Instance]]:
    """The Instances to score for every candidate pair of every sentence. `exclude`: per
    document, (head start, head end, tail start, tail end) character spans whose pairs (either
    direction, by overlap) are left out (the gold pairs of the dev set when fitting)."""
    plan, instances, pair = TextPlan(len(texts), skipped=[0] * len(texts)), [], -1
    for d, (text, sents) in enumerate(zip(texts, sentences, strict=True)):
        for sentence in sents:
            if len(sentence.mentions) < 2:
                continue
            words, offsets = tokenize_with_offsets(text[sentence.start:sentence.end])
            args = {m: (first, stop) for m, first, stop in _arguments(text, sentence, offsets)}
            kept = Sentence(sentence.start, sentence.end, sentence.index,
                            tuple(m for m in sentence.mentions if m in args))
            for head, tail in mention_pairs(kept, window):
                h, t = args[head], args[tail]
                if h[0] < t[1] and t[0] < h[1]:  # touch a common token
                    continue
                hs, ts = _char_span(sentence, offsets, *h), _char_span(sentence, offsets, *t)
                if exclude and _excluded(hs, ts, exclude.get(d, ())):
                    continue
                pair += 1
                for head_type, tail_type in types.variants(head, tail):
                    head_arg = _argument(text, hs, h, head, head_type, types.typed)
                    tail_arg = _argument(text, ts, t, tail, tail_type, types.typed)
                    plan.candidates.append(Candidate(d, sentence.index, pair, head_arg,
                                                     tail_arg))
                    instances.append(Instance(
                        id=f"{d}:{sentence.index}:{len(instances)}", tokens=tuple(words),
                        head=Span(h[0], h[1], "", head_type), tail=Span(t[0], t[1], "",
                                                                        tail_type),
                        relation="?"))
    return plan, instances


def _char_span(sentence: Sentence, offsets: list[tuple[int, int]], first: int, stop: int
               ) -> tuple[int, int]:
    return sentence.start + offsets[first][0], sentence.start + offsets[stop - 1][1]


def _argument(text: str, span: tuple[int, int], tokens: tuple[int, int], mention: Mention,
              schema_type: str | None, typed: bool) -> Argument:
    reported = schema_type if typed else (mention.type or mention.label)
    return Argument(span[0], span[1], text[span[0]:span[1]], reported, *tokens)


def _excluded(head: tuple[int, int], tail: tuple[int, int],
              gold: Sequence[tuple[int, int, int, int]]) -> bool:
    def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    for hs, he, ts, te in gold:
        if (overlaps(head, (hs, he)) and overlaps(tail, (ts, te))) or (
                overlaps(head, (ts, te)) and overlaps(tail, (hs, he))):
            return True
    return False


# --- the decision ----------------------------------------------------------------------------

def check_thresholds(thresholds: Any, known: Sequence[str]) -> dict[str, float]:
    """A caller's {relation or "*": threshold in [0, 1]}; DataError naming the key when bad."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise field_error("must be an object {relation: threshold}", "thresholds")
    out = {}
    for name, value in thresholds.items():
        where = f"thresholds.{name}"
        if name != ANY_RELATION and name not in known:
            raise field_error(f"{name!r} is not a relation of this model (trained or "
                              f"registered) nor {ANY_RELATION!r}", where)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and 0 <= value <= 1):
            raise field_error(f"must be a number between 0 and 1, got {value!r}", where)
        out[name] = float(value)
    return out


@dataclass(frozen=True)
class Decision:
    """Which predictions become triples (see the module docstring)."""

    no_relation: str
    types: TypeFilter
    fitted: float = 0.0
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def threshold(self, relation: str) -> float:
        return self.thresholds.get(relation, self.thresholds.get(ANY_RELATION, self.fitted))

    def passes(self, candidate: Candidate, prediction: Prediction) -> bool:
        relation = prediction.relation
        return (relation != self.no_relation
                and self.types.allows(relation, candidate.head.type, candidate.tail.type)
                and prediction.score >= self.threshold(relation))


def triples(plan: TextPlan, predictions: Sequence[Prediction], decision: Decision
            ) -> list[list[dict[str, Any]]]:
    """Per document, its triples in text order: each pair's best variant that passes."""
    best: dict[tuple[int, int], tuple[Candidate, Prediction]] = {}
    for candidate, prediction in zip(plan.candidates, predictions, strict=True):
        if not decision.passes(candidate, prediction):
            continue
        key = (candidate.document, candidate.pair)
        if key not in best or prediction.score > best[key][1].score:
            best[key] = (candidate, prediction)
    out: list[list[dict[str, Any]]] = [[] for _ in range(plan.documents)]
    for (document, _), (c, p) in sorted(best.items(), key=lambda kv: (
            kv[0][0], kv[1][0].head.start, kv[1][0].tail.start)):
        out[document].append({"head": c.head.to_dict(), "tail": c.tail.to_dict(),
                              "relation": p.relation, "score": p.score,
                              "sentence": c.sentence})
    return out
